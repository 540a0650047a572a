"""Configuration, read from environment variables in this one place.

Every setting is named after its environment variable. ``create_app`` takes a
dict with the same names to override them (the tests use it)::

    settings = load_settings({"DATABASE_URL": "sqlite:////tmp/test.db"})
    settings["PROFILER_SAMPLE_RATE"]  # -> 0.0, parsed and validated

A malformed value stops start-up with a message naming the variable, instead
of surfacing later as a confusing error deep inside a request.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from request_profiler import check_secret, parse_ttl
from request_profiler.profilers import BUILTIN_PROFILERS


class SettingsError(click.ClickException, ValueError):
    """A setting has a value that cannot be used.

    A ClickException too: create_app runs inside every ``flask --app webapp`` command, which
    then prints "Error: <the message>" and exits 1, not a traceback around it.
    """


def _text(value: str) -> str:
    return value.strip()


def _directory(value: str) -> str:
    """A directory, made absolute: empty, it would be the current directory (or, as VAR_DIR,
    put the database at /podcast.sqlite3). Not resolved: FREEZE_DIR is the symlink a freeze
    swaps, never the tree it points to."""
    value = value.strip()
    if not value:
        raise ValueError("must be a directory, not empty")
    return os.path.abspath(value)


def _profiler_engine(value: str) -> str:
    value = value.strip()
    if value not in BUILTIN_PROFILERS:
        raise ValueError(f"must be one of {', '.join(sorted(BUILTIN_PROFILERS))}")
    return value


def _float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return number

    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive whole number")
    return number


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _profiler_secret(value: str) -> str:
    """Empty (profiling off) or a secret long enough that tokens cannot be forged."""
    value = value.strip()
    if value:
        check_secret(value)  # its message says how to make one, and never shows the value
    return value


def _duration(value: str) -> int:
    seconds = parse_ttl(value)
    if seconds > _MAX_CONFIGURABLE_TTL:
        raise ValueError("must be at most 365d")
    return seconds


_MAX_CONFIGURABLE_TTL = 365 * 86400


def _uuid(value: str) -> str:
    return str(uuid.UUID(value.strip()))


#: The Podcast Namespace's own namespace for podcast:guid (UUIDv5 of the feed URL).
PODCAST_GUID_NAMESPACE = uuid.UUID("ead4c236-bf58-58c6-a2c6-a6b28d128cb6")


def podcast_guid(feed_url: str) -> str:
    """The show's podcast:guid: UUIDv5 of ``feed_url`` without scheme and trailing slashes."""
    return str(uuid.uuid5(PODCAST_GUID_NAMESPACE, feed_url.split("://", 1)[-1].rstrip("/")))


#: Whitespace and control characters: a URL printed into the feed and the pages holds none.
_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f]")


def _url_without_slash(value: str) -> str:
    """An http(s) URL with a host and nothing after its path: every absolute link is this
    followed by a path, so a query, a fragment or a space would break each of them."""
    value = value.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    value = value.rstrip("/")
    if _NOT_IN_URL.search(value):
        raise ValueError("must not hold spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError as error:
        raise ValueError(f"is not a URL: {error}") from None
    if not parts.hostname:
        raise ValueError("must name a host: https://podcast.example.org")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must end with its host or a path: no ?query or #fragment")
    return value


#: Settings whose values are never repeated in an error message (they hold credentials).
SECRET_SETTINGS = frozenset({"PROFILER_SECRET", "DATABASE_URL"})

#: name -> (parser, default). A callable default is computed from the settings
#: loaded before it (they load in this order), e.g. paths under VAR_DIR.
SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    # Where run-time files live: the SQLite database, profiles, sockets, builds. The default
    # is the caller's (create_app passes Flask's instance folder), so an installed site
    # never writes into site-packages.
    "VAR_DIR": (_directory, lambda settings: settings["VAR_DIR"]),
    # sqlite:///absolute/path.db or postgresql://user:password@host/dbname
    "DATABASE_URL": (_text, lambda settings: f"sqlite:///{settings['VAR_DIR']}/podcast.sqlite3"),
    # Seconds a PostgreSQL connection attempt may take before the request gets a 503.
    "DATABASE_CONNECT_TIMEOUT": (_positive_int, 3),
    # Connections each process may keep open to PostgreSQL.
    "DATABASE_POOL_SIZE": (_positive_int, 4),
    # The public address: absolute links in the feed and pages are built from it,
    # never from the request's Host header, so frozen pages equal live ones.
    "SITE_URL": (_url_without_slash, "http://127.0.0.1:8000"),
    "SITE_TITLE": (_text, "Talk Fast Python"),
    "SITE_AUTHOR": (_text, "Talk Fast Python"),
    # Verifies ownership when the feed moves host (podcast:locked) and reaches Apple (itunes:owner).
    "SITE_OWNER_EMAIL": (_text, "host@example.com"),
    # Who hosts the show: podcast:person role="host" in the feed.
    "SITE_HOST": (_text, "Morgan Reyes"),
    # The show's lasting identity (podcast:guid), made once from the feed URL. Set it
    # explicitly before the feed moves to another address: it must never change.
    "SITE_PODCAST_GUID": (
        _uuid,
        lambda settings: podcast_guid(f"{settings['SITE_URL']}/episodes/rss"),
    ),
    "SITE_LANGUAGE": (_text, "en-us"),
    # Where `flask freeze` writes the static site nginx serves.
    "FREEZE_DIR": (_directory, lambda settings: f"{settings['VAR_DIR']}/build"),
    # Profiler: with no secret, on-demand profiling is off (see request_profiler).
    # At least 32 bytes: python -c 'import secrets; print(secrets.token_urlsafe(32))'
    "PROFILER_SECRET": (_profiler_secret, ""),
    # The longest a profiling token may live (90s, 15m, 1h, 2d): longer ones are
    # neither minted by `profiler-token` nor accepted.
    "PROFILER_TOKEN_MAX_TTL": (_duration, 86400),
    "PROFILER_SAMPLE_RATE": (_float_between(0.0, 1.0), 0.0),
    "PROFILER_SLOW_MS": (_float_between(0.0, 3_600_000.0), 0.0),
    "PROFILER_DIR": (_directory, lambda settings: f"{settings['VAR_DIR']}/profiles"),
    # postgresql://…: profiles in PostgreSQL, one list for every app server (PostgresStore).
    # Empty: files in PROFILER_DIR, one list per server.
    "PROFILER_STORE": (_text, ""),
    "PROFILER_MAX_PROFILES": (_positive_int, 200),
    "PROFILER_MAX_BYTES": (_positive_int, 100 * 1024 * 1024),
    "PROFILER_ENGINE": (_profiler_engine, "pyinstrument"),
    # Python's cyclic GC is frozen before uWSGI forks; see webapp/wsgi.py.
    "GC_FREEZE": (_flag, True),
}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    default_var_dir: str = "instance",
) -> dict[str, Any]:
    """Return every setting, from ``overrides``, then ``environ``, then defaults.

    ``default_var_dir`` is VAR_DIR when neither sets it: ``create_app`` passes the app's
    instance folder (``<prefix>/var/webapp-instance`` when installed, ``./instance`` in a
    checkout; the scripts export ``VAR_DIR=<checkout>/var``).

    Values from the environment (strings) are parsed; overrides that are not
    strings are taken as already parsed. Unknown override keys are kept, so a
    caller can pass Flask's own settings (``TESTING``) through the same dict.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    settings: dict[str, Any] = {"VAR_DIR": str(Path(default_var_dir).resolve())}
    for name, (parse, default) in SETTINGS.items():
        if name in overrides and not isinstance(overrides[name], str):
            settings[name] = overrides.pop(name)
            continue
        raw = overrides.pop(name, environ.get(name))
        if raw is None:
            settings[name] = default(settings) if callable(default) else default
            continue
        try:
            settings[name] = parse(raw)
        except ValueError as error:
            shown = name if name in SECRET_SETTINGS else f"{name}={raw!r}"
            raise SettingsError(f"{shown}: {error}") from None
    settings.update(overrides)
    return settings
