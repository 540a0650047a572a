"""Fixtures that run the real stack: nginx, uWSGI (deploy/uwsgi/uwsgi.ini) and, for one test,
PostgreSQL.

Everything is started through ``deploy.stack`` (what ``scripts/serve`` runs) on free
ports, with sockets, pid files, logs and the frozen build in pytest's tmp dirs, and
stopped by pid at teardown. Missing nginx, uWSGI or PostgreSQL binaries skip these
tests with the reason, or fail them under REQUIRE_SERVICES=1 (tests/conftest.py).

    def test_something(site_stack):          # one shared stack: 2 uWSGI instances, HTTP and HTTPS
        status, headers, body = get(site_stack.settings.url + "/")

    def test_fault(make_stack):              # a stack of its own, e.g. with a lowered harakiri
        stack = make_stack(uwsgi_options={"harakiri": "1"})
"""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from deploy.stack import Stack, StackSettings
from deploy.stack.settings import PROJECT_ROOT, find_uwsgi
from tests.conftest import require_binary, require_service
from webapp import create_app
from webapp.db import get_database
from webapp.db.seed import seed
from webapp.freeze import freeze

from .support import PrivatePostgres, free_port, postgres_bindir

#: Episodes in the stack's database: a few pages of the API, a catalogue, enough redirects.
EPISODES = 40
#: The address the site believes it has; the frozen pages and the app's answers both use it.
SITE_URL = "https://podcast.test"
#: Lets the tests mint profiling tokens the stack accepts.
PROFILER_SECRET = "stack-tests-profiler-secret-of-32-bytes-or-more"


@dataclass
class Site:
    """A seeded database, the app on it (for expected answers), and its frozen build."""

    app: Flask
    database_url: str
    build_dir: Path
    environment: dict[str, str]


@pytest.fixture(scope="session")
def stack_binaries() -> dict[str, str]:
    nginx = require_binary("nginx")
    uwsgi = find_uwsgi()
    require_service(uwsgi, "uWSGI is not installed in this environment (pip install uWSGI)")
    return {"nginx": nginx, "uwsgi": uwsgi}  # type: ignore[dict-item]


def app_environment(database_url: str, var_dir: Path) -> dict[str, str]:
    """The app's settings for uWSGI: the in-process app's values, as environment variables."""
    return {
        "DATABASE_URL": database_url,
        "VAR_DIR": str(var_dir),
        "SITE_URL": SITE_URL,
        "PROFILER_SECRET": PROFILER_SECRET,
        "PROFILER_DIR": str(var_dir / "profiles"),
        # What the test modules (tests.stack.probe_wsgi) import, uWSGI's Python finds too.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    }


def build_site(database_url: str, root: Path) -> Site:
    environment = app_environment(database_url, root / "var")
    app = create_app(
        {key: value for key, value in environment.items() if key != "PYTHONPATH"}
        | {"TESTING": True}
    )
    database = get_database(app)
    database.init_schema()
    with database.session() as session:
        seed(session, EPISODES)
    build_dir = root / "build"
    freeze(app, build_dir)
    return Site(app=app, database_url=database_url, build_dir=build_dir, environment=environment)


@pytest.fixture(scope="session")
def site(
    tmp_path_factory: pytest.TempPathFactory, stack_binaries: dict[str, str]
) -> Iterator[Site]:
    """A SQLite site shared by the stacks that only read."""
    root = tmp_path_factory.mktemp("site")
    site = build_site(f"sqlite:///{root}/podcast.sqlite3", root)
    yield site
    get_database(site.app).close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway certificate for localhost and 127.0.0.1 (ECDSA P-256, a day) and its key."""
    openssl = require_binary("openssl")
    directory = tmp_path_factory.mktemp("tls")
    certificate, key = directory / "cert.pem", directory / "key.pem"
    request = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    names = "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
    arguments = [*f"{request} {names}".split(), "-keyout", key, "-out", certificate]
    subprocess.run([openssl, *arguments], check=True, capture_output=True, timeout=60)
    return certificate, key


@pytest.fixture(scope="session")
def tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """Trusts exactly the test certificate (HTTP/1.1: http.client speaks nothing else)."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def _start(tmp: Path, site: Site, stack_binaries: dict[str, str], **overrides: Any) -> Stack:
    environment = dict(site.environment)
    environment.update(overrides.pop("environment", {}))
    settings = StackSettings(
        run_dir=tmp / "run",
        build_dir=site.build_dir,
        port=free_port(),
        environment=environment,
        nginx=stack_binaries["nginx"],
        uwsgi=stack_binaries["uwsgi"],
        # Two workers per instance whatever the machine: the fault tests count on it.
        uwsgi_options={"processes": "2"},
        start_timeout=60,
        stop_timeout=30,
    )
    uwsgi_options = overrides.pop("uwsgi_options", {})
    settings.uwsgi_options.update(uwsgi_options)
    for name, value in overrides.items():
        setattr(settings, name, value)
    stack = Stack(settings)
    stack.start()
    return stack


@pytest.fixture(scope="session")
def site_stack(
    tmp_path_factory: pytest.TempPathFactory,
    site: Site,
    stack_binaries: dict[str, str],
    certificate: tuple[Path, Path],
) -> Iterator[Stack]:
    """The shared stack: 2 uWSGI instances behind nginx, HTTP and HTTPS, over the shared site."""
    stack = _start(
        tmp_path_factory.mktemp("stack"),
        site,
        stack_binaries,
        uwsgi_instances=2,
        nginx_options={
            "https_listen": f"127.0.0.1:{free_port()}",
            "certificate": certificate[0],
            "certificate_key": certificate[1],
        },
    )
    yield stack
    stack.stop()


@pytest.fixture
def make_stack(
    tmp_path: Path, site: Site, stack_binaries: dict[str, str]
) -> Iterator[Callable[..., Stack]]:
    """Start a stack of the test's own (StackSettings fields as keywords); stopped at teardown."""
    started: list[Stack] = []

    def make(site_: Site | None = None, **overrides: Any) -> Stack:
        stack = _start(
            tmp_path / f"stack{len(started)}", site_ or site, stack_binaries, **overrides
        )
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stack.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, which it may stop and start."""
    bindir = postgres_bindir()
    require_service(bindir, "PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0:
        require_binary("runuser")
    server = PrivatePostgres(bindir)  # type: ignore[arg-type]
    try:
        server.init()
        yield server
    finally:
        server.destroy()
