"""The suite on every Python the site supports (3.11, 3.12, 3.13), one virtualenv each.

    nox -s tests-3.13                 # the whole suite on 3.13, the stack tests included
    nox -s app                        # the profiler and app tests (no stack) on 3.12 and 3.13
    nox -s tests-3.12 -- -k profiler  # any pytest arguments after --

nox finds ``python3.12`` and ``python3.13`` on PATH (.ci/run puts pyenv's there). The
venvs live in ``.nox/`` and are reused with ``-r``. ``./scripts/test`` stays the way to
run the suite on the default Python (3.11); .ci/run runs it, then ``nox -s app``.

Why both sessions: the profiler's engines behave differently from 3.12 (cProfile on
``sys.monitoring``, one profiler at a time; tests/profiler/test_other_profiler.py), and
the app runs on each interpreter's C extensions (psycopg2, uWSGI). The stack tests start
real nginx and uWSGI and take most of the suite's time; ``tests`` runs them on any Python
asked for, ``app`` leaves them to the 3.11 run.
"""

from __future__ import annotations

import nox

PYTHONS = ["3.11", "3.12", "3.13"]
#: Where the interpreter matters and the suite is cheap: everything but the real stack.
APP_ONLY = ["-m", "not stack"]

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["app"]


def install(session: nox.Session) -> None:
    # As scripts/test does: the profiler first (the site depends on it by name), both editable.
    session.install("-e", "./profiling", "-e", ".[dev]")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite (stack tests included) on one interpreter."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=["3.12", "3.13"])
def app(session: nox.Session) -> None:
    """The profiler and app tests on the interpreters beyond the default one."""
    install(session)
    session.run("python", "-m", "pytest", *APP_ONLY, *session.posargs)
