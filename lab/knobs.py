"""The knobs an experiment may turn, each with its default and its check.

A configuration is a flat mapping of knob names to values::

    settings = resolve({"uwsgi.processes": "2*cpus", "request.path": "/api/episodes"})
    settings["uwsgi.processes"]      # -> "2*cpus" (checked; made a number at start-up)
    process_count("2*cpus", cpus=2)  # -> 4

Knobs are grouped by what they act on: ``uwsgi.*`` and ``nginx.*`` the servers,
``app.*`` the application's environment, ``request.*`` the URL being loaded,
``load.*`` the load generator. A server knob left unset (None) keeps what
deploy/ configures. An unknown name or a bad value raises :class:`KnobError`,
with the closest known name when there is one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class KnobError(ValueError):
    """A knob name that does not exist or a value it cannot take."""


@dataclass(frozen=True)
class Knob:
    """One thing an experiment may change.

    :param name: ``group.name``, as written in experiment files.
    :param default: the value when no file sets it; :data:`DEPLOYED` keeps deploy/'s.
    :param check: returns the value if it is valid, raises ValueError saying why if not.
    :param help: one line for ``scripts/bench --help``.
    """

    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        # bool is an int subclass: `threads = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return check


def _choice(*choices: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in choices:
            raise ValueError(
                "must be one of " + ", ".join(toml_value(choice) for choice in choices)
            )
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


_PER_CPU = re.compile(r"(?:(\d+)\s*\*\s*)?cpus")


def _processes(value: Any) -> int | str:
    """A count of processes: a number, or a multiple of the CPU count ("cpus", "2*cpus")."""
    if isinstance(value, str) and (match := _PER_CPU.fullmatch(value.strip())):
        if 1 <= int(match.group(1) or 1) <= 16:
            return value.strip()
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 256:
        return value
    raise ValueError(
        'must be a number from 1 to 256, "cpus" or a multiple such as "2*cpus" (up to 16)'
    )


def _worker_processes(value: Any) -> int | str:
    return "auto" if value == "auto" else _processes(value)


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError('must be a URL path starting with "/", without spaces')
    return value


def _status(value: Any) -> int | None:
    return None if value == "auto" else _integer(100, 599)(value)


def toml_value(value: Any) -> str:
    """``value`` as an experiment file writes it: ``true``, ``"cpus"``, ``4``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def process_count(value: int | str, cpus: int) -> int:
    """The number a ``processes`` value stands for on a machine with ``cpus`` CPUs."""
    if isinstance(value, int):
        return value
    if value == "auto":
        return cpus
    match = _PER_CPU.fullmatch(value)
    assert match is not None, value  # checked by _processes
    return int(match.group(1) or 1) * cpus


#: app.server values run behind the lab's minimal nginx (lab/front.py), not deploy/stack's.
FRONTED_SERVERS = ("uwsgi", "gunicorn", "granian")

#: The value of a server knob nobody set: whatever deploy/ configures (the lab never restates it).
DEPLOYED = None

_KNOBS = [
    # uWSGI: options passed over deploy/uwsgi/uwsgi.ini.
    Knob("uwsgi.processes", DEPLOYED, _processes, 'worker processes: a number, "cpus" or "2*cpus"'),
    Knob("uwsgi.threads", DEPLOYED, _integer(1, 64), "threads per worker (1: no threads)"),
    Knob(
        "uwsgi.logging",
        DEPLOYED,
        _choice("on", "off", "syslog-udp"),
        'request logging: "on" (to the log file), "off", or "syslog-udp" to a local UDP socket',
    ),
    Knob(
        "uwsgi.max_requests",
        DEPLOYED,
        _integer(0, 10_000_000),
        "recycle a worker after this many requests (0: never)",
    ),
    Knob(
        "uwsgi.max_worker_lifetime",
        DEPLOYED,
        _integer(0, 86_400),
        "recycle a worker after this many seconds (0: never)",
    ),
    Knob(
        "uwsgi.lazy_apps",
        DEPLOYED,
        _flag,
        "true: each worker imports the app itself after the fork (deploy/uwsgi: loaded before it)",
    ),
    # nginx: settings of the deploy/nginx templates.
    Knob(
        "nginx.worker_processes",
        DEPLOYED,
        _worker_processes,
        'a number, "auto", "cpus" or "2*cpus"',
    ),
    Knob(
        "nginx.worker_connections",
        DEPLOYED,
        _integer(16, 65_536),
        "connections per nginx worker (deploy/nginx: 4096)",
    ),
    Knob(
        "nginx.open_file_cache",
        DEPLOYED,
        _flag,
        "false: no cache of open files (deploy/nginx has one)",
    ),
    Knob(
        "nginx.gzip",
        DEPLOYED,
        _flag,
        "false: no gzip at all (deploy/nginx compresses on the fly and serves .gz files)",
    ),
    Knob("nginx.access_log", DEPLOYED, _flag, "nginx's buffered access log"),
    Knob("nginx.microcache", DEPLOYED, _flag, "the 1 s micro-cache of /api/ and /search"),
    # The application and the server that runs it.
    Knob(
        "app.server",
        "stack",
        _choice("stack", *FRONTED_SERVERS),
        '"stack": deploy/stack\'s nginx and uWSGI; "uwsgi", "gunicorn" or "granian": that '
        "server behind the lab's minimal nginx (lab/front.py)",
    ),
    Knob(
        "app.wsgi",
        "site",
        _choice("site", "hello", "flask_hello"),
        '"site": the podcast site; "hello": a bare WSGI "hello" (lab/hello.py), the ceiling; '
        '"flask_hello": a minimal Flask app answering "hello" (lab/flask_hello.py)',
    ),
    Knob(
        "app.database",
        "sqlite",
        _choice("sqlite", "postgresql"),
        'the database backend: "sqlite" or "postgresql"',
    ),
    Knob(
        "app.gc_freeze",
        DEPLOYED,
        _flag,
        "gc.freeze() in the uWSGI master before the fork (GC_FREEZE)",
    ),
    Knob(
        "app.profiler",
        "none",
        _choice("none", "off", "sampled", "on", "pyinstrument_recipe", "werkzeug"),
        '"none": not installed; "off": installed, token-only; "sampled": 1% of requests; '
        '"on": every request; for comparison, "pyinstrument_recipe": pyinstrument\'s documented '
        'Flask recipe (requests with ?profile); "werkzeug": Werkzeug\'s ProfilerMiddleware, '
        "every request",
    ),
    Knob(
        "app.feed",
        "cached",
        _choice("cached", "cold", "feedgen"),
        'the feed route: "cached" (the app), "cold" (the app without its cache), '
        '"feedgen" (built per request with feedgen, for comparison)',
    ),
    Knob("app.frozen", False, _flag, "freeze the site first, so nginx serves its pages as files"),
    # What is loaded.
    Knob("request.path", "/", _path, "the URL path loaded"),
    Knob(
        "request.via",
        "nginx",
        _choice("nginx", "uwsgi"),
        "through nginx, or straight to uWSGI's HTTP socket",
    ),
    Knob("request.conditional", False, _flag, "send If-None-Match with the ETag of a first GET"),
    Knob("request.gzip", False, _flag, "send Accept-Encoding: gzip"),
    Knob(
        "request.search_texts",
        False,
        _flag,
        "each request adds ?q= with another of the lab's search texts (lab/search_texts.py) "
        "to the path, never one the site has cached (wrk only)",
    ),
    Knob(
        "request.expect",
        None,
        _status,
        'the status every response must have ("auto": 304 if conditional, else 200)',
    ),
    # The load generator. Whole seconds: wrk takes no fractions.
    Knob("load.connections", 32, _integer(1, 10_000), "concurrent connections"),
    Knob("load.threads", 1, _integer(1, 64), "load generator threads (wrk -t; ab has one)"),
    Knob("load.duration", 5, _integer(1, 600), "seconds of each measured run"),
    Knob("load.warmup", 1, _integer(0, 600), "seconds of load before each run, not measured"),
]

KNOBS: dict[str, Knob] = {knob.name: knob for knob in _KNOBS}
DEFAULTS: dict[str, Any] = {knob.name: knob.default for knob in _KNOBS}


def check(name: str, value: Any) -> Any:
    """``value`` checked for knob ``name``; raises :class:`KnobError` naming both."""
    knob = KNOBS.get(name)
    if knob is None:
        close = difflib.get_close_matches(name, KNOBS, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise KnobError(f'unknown knob "{name}"{hint}')
    try:
        return knob.check(value)
    except ValueError as error:
        raise KnobError(f"{name} = {toml_value(value)}: {error}") from None


def resolve(changes: Mapping[str, Any], base: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """Every knob: ``base`` with ``changes`` (checked) applied."""
    settings = dict(base)
    settings.update({name: check(name, value) for name, value in changes.items()})
    return settings


def unused_changes(
    changes: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[list[str], str]:
    """Knobs in ``changes`` that cannot affect what ``settings`` load, and why.

    That is nginx's knobs when the load goes straight to uWSGI or when the lab's minimal nginx
    fronts the app server (it has none of deploy/nginx's settings), and uWSGI's knobs when
    another server runs the app.
    """
    nginx = [name for name in changes if name.startswith("nginx.") or name == "app.frozen"]
    server = settings["app.server"]
    if server in ("gunicorn", "granian"):
        uwsgi = [name for name in changes if name.startswith("uwsgi.")]
        if uwsgi:
            return uwsgi, f'uWSGI does not run the app when app.server = "{server}"'
    if server != "stack" and nginx:
        return nginx, "the lab's minimal nginx has none of deploy/nginx's settings"
    if settings["request.via"] == "uwsgi" and nginx:
        return nginx, 'they only affect requests through nginx, but request.via = "uwsgi"'
    return [], ""


def conflict(settings: Mapping[str, Any]) -> str | None:
    """Why ``settings`` cannot be run together, or None."""
    if settings["request.search_texts"] and "?" in settings["request.path"]:
        return "request.search_texts adds the query string: request.path must have none"
    if settings["app.server"] != "stack" and settings["request.via"] != "nginx":
        return (
            f'app.server = "{settings["app.server"]}" is loaded through nginx only '
            '(request.via = "nginx")'
        )
    return None


def describe(changes: Mapping[str, Any]) -> str:
    """A short human form of some knob values: ``uwsgi.processes=4, nginx.gzip=false``."""
    return ", ".join(
        f"{name}={'deployed' if value is DEPLOYED else toml_value(value).strip(chr(34))}"
        for name, value in changes.items()
    )
