"""The WSGI app that shows stored profiles to token holders.

:class:`~request_profiler.ProfilerMiddleware` mounts it at its
``viewer_prefix`` (``/_profiler`` by default). Its pages:

``/_profiler/``
    the recent profiles, newest first (``?sort=duration``: slowest first), and
    the buttons that set and clear the ``_profile`` cookie (a POST, honoured
    only from the viewer's own origin: see :mod:`request_profiler.origin`);
``/_profiler/endpoints``
    count, median, p95 and total duration per endpoint;
``/_profiler/<id>``
    one request: its metadata, its SQL queries, its downloads, and the
    profiler's own page in a frame;
``/_profiler/<id>/profile.html``
    the profiler's page (pyinstrument's call tree and timeline);
``/_profiler/<id>/download/<format>``
    ``speedscope`` and ``session`` (pyinstrument), ``pstats`` (cProfile).

A request without a valid token is handed to the site itself, which answers
with its own 404: to anyone without a token the viewer does not exist.
Token-bearing URLs are never written into the pages, which is why the pages
link to each other without the ``_profile`` query parameter: browse them with
the cookie (the first page's button) or an ``X-Profile-Token`` header.

Everything a page shows that came from a request (path, query, headers,
endpoint, SQL, error) is escaped for where it stands. Every response carries
its own Content-Security-Policy: the viewer's pages run no script at all, and
``profile.html`` runs only the inline scripts its engine names by hash
(:attr:`Profiler.script_hashes`), so even markup that slipped through would
not run. A stricter policy added on top by a proxy for these paths would break
pyinstrument's page, since browsers enforce every policy they receive.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from .origin import is_same_origin
from .pages import Markup, element, page, table
from .profilers import Profiler
from .store import Store, StoreUnavailable, is_profile_id
from .tokens import TOKEN_PARAM, TokenVerifier, ValidToken

logger = logging.getLogger("request_profiler")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PRIVATE = [
    ("Cache-Control", "no-store"),
    # Keeps a token that came in the query string out of Referer headers.
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Robots-Tag", "noindex"),
]
_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# pyinstrument's app sets inline styles from its script (hence 'unsafe-inline'
# for styles only) and draws no image or font from anywhere but data: URLs.
_PROFILE_CSP = (
    "default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
)


def profile_page_headers(profiler: Profiler) -> list[tuple[str, str]]:
    """Headers for a profiler's own HTML page, here and in the middleware's inline view."""
    scripts = " ".join(profiler.script_hashes) or "'none'"
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", _PROFILE_CSP.format(scripts=scripts)),
        *_PRIVATE,
    ]


_HTML_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", _PAGE_CSP),
    *_PRIVATE,
]
_TEXT_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), *_PRIVATE]
_MAX_FORM_BYTES = 1024


class _Response(NamedTuple):
    status: str
    body: bytes
    headers: list[tuple[str, str]]


class Viewer:
    """Serves the pages above from ``store``, for the holders of a token ``tokens`` accepts.

    ``profilers`` reads stored profiles back, by engine name; ``fallback``
    answers every request without a valid token. ``before_reading`` runs before
    the store is read for a token holder, and only then: a request without a
    token must cost what the site's own answer costs, whatever the store is doing.
    """

    def __init__(
        self,
        *,
        prefix: str,
        store: Store,
        tokens: TokenVerifier,
        profilers: Mapping[str, Profiler],
        fallback: WSGIApp,
        clock: Callable[[], float] = time.time,
        before_reading: Callable[[], object] = lambda: None,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self._root = self.prefix + "/"
        self._store = store
        self._tokens = tokens
        self._profilers = profilers
        self._fallback = fallback
        self._clock = clock
        self._before_reading = before_reading

    def handles(self, path: str) -> bool:
        """Whether ``path`` (a PATH_INFO) is under the viewer's prefix."""
        return path.startswith(self._root) or path == self.prefix

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        token = self._tokens.from_environ(environ)
        if token is None:
            return self._fallback(environ, start_response)
        self._before_reading()
        try:
            response = self._route(environ, token)
        except StoreUnavailable as error:
            response = _unavailable(str(error))
        except _ForeignMetadata as foreign:
            logger.warning(
                "request_profiler: profile %s has metadata the middleware does not write "
                "(a file or row made by something else); shown as damaged",
                foreign.profile_id,
            )
            response = _damaged()
        start_response(
            response.status, [*response.headers, ("Content-Length", str(len(response.body)))]
        )
        return [response.body]

    def _route(self, environ: dict[str, Any], token: ValidToken) -> _Response:
        base = environ.get("SCRIPT_NAME", "") + self.prefix
        rest = environ.get("PATH_INFO", "")[len(self.prefix) :].strip("/")
        parts = rest.split("/") if rest else []
        query = parse_qs(environ.get("QUERY_STRING", ""))
        match environ.get("REQUEST_METHOD", "GET"), parts:
            case "GET", []:
                return self._list(base, by_duration=query.get("sort") == ["duration"])
            case "POST", []:
                return self._cookie_button(environ, base, token)
            case "GET", ["endpoints"]:
                return self._endpoints(base)
            case "GET", [profile_id]:
                return self._detail(base, profile_id)
            case "GET", [profile_id, "profile.html"]:
                return self._profile_page(profile_id)
            case "GET", [profile_id, "download", fmt]:
                return self._download(profile_id, fmt)
        return _not_found()

    def _recent(self) -> list[dict[str, Any]]:
        """The store's recent profiles but those the viewer cannot show (see is_listable)."""
        return [meta for meta in self._store.recent() if is_listable(meta)]

    def _list(self, base: str, *, by_duration: bool) -> _Response:
        metas = self._recent()
        if by_duration:
            metas.sort(key=lambda meta: meta["duration_ms"], reverse=True)
        rows = (
            (
                element("a", _when(meta["time"]), href=f"{base}/{meta['id']}"),
                _host(meta),
                meta["method"],
                _target(meta),
                _status(meta),
                _ms(meta["duration_ms"]),
                f"{meta['sql_count']} / {_ms(meta['sql_ms'])}",
                meta["trigger"],
                meta["profiler"],
            )
            for meta in metas
        )
        head = (
            "Time (UTC)",
            "Host",
            "Method",
            "Path",
            "Status",
            "ms",
            "SQL queries / ms",
            "Trigger",
            "Profiler",
        )
        cookie_form = element(
            "form",
            element("button", "Profile while browsing", type="submit", name="cookie", value="set"),
            element(
                "button",
                "Stop profiling while browsing",
                type="submit",
                name="cookie",
                value="clear",
            ),
            method="post",
        )
        help_text = element(
            "p",
            f"The first button stores your token in the {TOKEN_PARAM} cookie (HttpOnly, "
            "SameSite=Strict) until it expires: every page of the site you then open is "
            "profiled, one at a time, and listed here.",
        )
        title = "Slowest profiles" if by_duration else "Recent profiles"
        return _html(
            title,
            _nav(base),
            element("h1", title),
            cookie_form,
            help_text,
            table(head, rows, numeric=frozenset({4, 5, 6})),
        )

    def _cookie_button(self, environ: dict[str, Any], base: str, token: ValidToken) -> _Response:
        if not is_same_origin(environ):
            return _Response(
                "403 Forbidden",
                b"The profiling cookie is set only from the viewer's own page "
                b"(a same-origin POST, as Sec-Fetch-Site or Origin tells).",
                _TEXT_HEADERS,
            )
        try:
            # Negative, read() would take the whole body: a server facing clients may pass it on.
            length = max(0, min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_FORM_BYTES))
        except ValueError:
            length = 0
        form = parse_qs(environ["wsgi.input"].read(length).decode("latin-1"))
        action = form.get("cookie", [""])[0]
        if action == "set":
            value, max_age = token.token, max(0, int(token.expires_at - self._clock()))
        elif action == "clear":
            value, max_age = "", 0
        else:
            return _Response(
                "400 Bad Request", b"expected cookie=set or cookie=clear", _TEXT_HEADERS
            )
        cookie = f"{TOKEN_PARAM}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict"
        if environ.get("wsgi.url_scheme") == "https":
            cookie += "; Secure"
        return _Response(
            "303 See Other", b"", [("Location", f"{base}/"), ("Set-Cookie", cookie), *_PRIVATE]
        )

    def _endpoints(self, base: str) -> _Response:
        metas = self._recent()
        rows = (
            (s.endpoint, s.count, _ms(s.median_ms), _ms(s.p95_ms), _ms(s.total_ms), _ms(s.sql_ms))
            for s in aggregate(metas)
        )
        head = ("Endpoint", "Profiles", "Median ms", "p95 ms", "Total ms", "SQL ms")
        note = element(
            "p",
            f"Over the {len(metas)} stored profiles, most total time first. They are the "
            "requests asked for with a token and the sampled ones slower than slow_ms, so "
            "they show where profiled time goes, not site-wide averages.",
        )
        return _html(
            "Time per endpoint",
            _nav(base),
            element("h1", "Time per endpoint"),
            note,
            table(head, rows, numeric=frozenset({1, 2, 3, 4, 5})),
        )

    def _detail(self, base: str, profile_id: str) -> _Response:
        stored = self._load(profile_id)
        if stored is None:
            return _not_found()
        meta, _ = stored
        response_ms = meta["response_ms"]
        facts = (
            ("Time (UTC)", _when(meta["time"])),
            ("Status", _status(meta)),
            ("Duration", f"{_ms(meta['duration_ms'])} ms (until close())"),
            (
                "Server-Timing app",
                "—" if response_ms is None else f"{_ms(response_ms)} ms (to start_response)",
            ),
            ("Endpoint", meta["endpoint"] or "—"),
            (
                "Body sent completely",
                "yes" if meta["body_complete"] else "no (error or client disconnected)",
            ),
            ("Error", meta["error"] or "—"),
            ("Trigger", meta["trigger"]),
            ("Profiler", meta["profiler"]),
            ("Host", _host(meta)),
            ("Process", meta["pid"]),
        )
        sql_rows = ((element("code", statement), _ms(ms)) for statement, ms in meta["sql"])
        count = meta["sql_count"]
        sql_summary = f"{count} {'query' if count == 1 else 'queries'}, {_ms(meta['sql_ms'])} ms"
        if count > len(meta["sql"]):
            sql_summary += f" (the first {len(meta['sql'])} are listed)"
        sections = [
            _nav(base),
            element("h1", meta["method"], " ", _target(meta)),
            table(None, facts),
            element("h2", "SQL"),
            element("p", sql_summary),
            table(("Statement", "ms"), sql_rows, numeric=frozenset({1})),
            element("h2", "Request headers"),
            table(("Header", "Value"), sorted(meta["headers"].items())),
        ]
        profiler = self._profilers.get(meta["profiler"])
        if profiler is not None:
            links = [
                element(
                    "a",
                    f"Download {profile_id}{export.suffix}",
                    href=f"{base}/{profile_id}/download/{fmt}",
                )
                for fmt, export in profiler.formats.items()
            ]
            links.append(
                element("a", "Open the profile full page", href=f"{base}/{profile_id}/profile.html")
            )
            sections += [
                element("h2", "Profile"),
                element("ul", *(element("li", link) for link in links)),
                element("iframe", src=f"{base}/{profile_id}/profile.html", title="profile"),
            ]
        return _html(f"{meta['method']} {meta['path']}", *sections)

    def _profile_page(self, profile_id: str) -> _Response:
        found = self._read(profile_id)
        if found is None:
            return _not_found()
        profiler, data = found
        try:
            body = profiler.render_html(data).encode()
        except Exception:  # see _unreadable_data
            return _unreadable_data(profile_id)
        return _Response("200 OK", body, profile_page_headers(profiler))

    def _download(self, profile_id: str, fmt: str) -> _Response:
        found = self._read(profile_id)
        if found is None or fmt not in found[0].formats:
            return _not_found()
        profiler, data = found
        try:
            body = profiler.export(data, fmt)
        except Exception:  # see _unreadable_data
            return _unreadable_data(profile_id)
        export = profiler.formats[fmt]
        headers = [
            ("Content-Type", export.content_type),
            ("Content-Disposition", f'attachment; filename="{profile_id}{export.suffix}"'),
            *_PRIVATE,
        ]
        return _Response("200 OK", body, headers)

    def _read(self, profile_id: str) -> tuple[Profiler, bytes] | None:
        """The profile's data and the engine that reads it."""
        stored = self._load(profile_id)
        if stored is None:
            return None
        meta, data = stored
        profiler = self._profilers.get(meta["profiler"])
        return None if profiler is None else (profiler, data)

    def _load(self, profile_id: str) -> tuple[dict[str, Any], bytes] | None:
        """The profile, or None if there is none; raises _ForeignMetadata if its metadata is
        not the middleware's."""
        # Checked here too, so that no Store implementation ever sees a path.
        stored = self._store.load(profile_id) if is_profile_id(profile_id) else None
        if stored is not None and not is_viewable(stored[0]):
            raise _ForeignMetadata(profile_id)
        return stored


class _ForeignMetadata(Exception):
    def __init__(self, profile_id: str) -> None:
        super().__init__(profile_id)
        self.profile_id = profile_id


def is_listable(meta: object) -> bool:
    """Whether ``meta`` has the shape of the middleware's metadata, as far as the lists need:
    every key it writes, each value the lists show of the type they show, the SQL a list and
    the headers an object. The items of these two are checked by :func:`is_viewable` only:
    checking every statement of every profile would cost a list as much as drawing it.

    A store may hold what something else wrote: a hand-made file, another program's JSON, a row
    inserted by hand. Such a profile is damaged: left out of the lists, its own pages a 404.
    """
    if type(meta) is not dict:
        return False
    try:
        status, response_ms, profile_id = meta["status"], meta["response_ms"], meta["id"]
        return (
            type(profile_id) is str
            and is_profile_id(profile_id)
            and _number(meta["time"])
            and 0 <= meta["time"] <= _LAST_TIME
            and type(meta["method"]) is str
            and type(meta["path"]) is str
            and type(meta["query"]) is str
            and type(meta["trigger"]) is str
            and type(meta["profiler"]) is str
            and (status is None or type(status) is int)
            and _number(meta["duration_ms"])
            and (response_ms is None or _number(response_ms))
            and type(meta["sql_count"]) is int
            and _number(meta["sql_ms"])
            and type(meta["pid"]) is int
            and type(meta["body_complete"]) is bool
            and _optional_text(meta["endpoint"])
            and _optional_text(meta["error"])
            and _optional_text(meta.get("host"))  # none in profiles saved before it was
            and type(meta["sql"]) is list
            and type(meta["headers"]) is dict
        )
    except KeyError:
        return False


def is_viewable(meta: object) -> bool:
    """Whether ``meta`` is whole for a profile's own page: :func:`is_listable`, each SQL row a
    statement and its milliseconds, each header's value text."""
    return (
        is_listable(meta)
        and all(
            type(row) is list and len(row) == 2 and type(row[0]) is str and _number(row[1])
            for row in meta["sql"]  # type: ignore[index]
        )
        and all(type(value) is str for value in meta["headers"].values())  # type: ignore[index]
    )


def _optional_text(value: object) -> bool:
    return value is None or type(value) is str


#: The last second datetime can show (9999-12-31T23:59:59 UTC).
_LAST_TIME = 253402300799
#: Beyond it, an int has no float ("{:.1f}" raises OverflowError).
_LARGEST_FLOAT = int(sys.float_info.max)


def _number(value: object) -> bool:
    """A finite number. JSON's numbers are exactly int or float (type(), not isinstance(): a
    bool is no number here); Python reads NaN and Infinity too, and 1e400 as inf."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return kind is int and -_LARGEST_FLOAT <= value <= _LARGEST_FLOAT  # type: ignore[operator]


@dataclass(frozen=True)
class EndpointStats:
    endpoint: str
    count: int
    median_ms: float
    p95_ms: float
    total_ms: float
    sql_ms: float


def aggregate(metas: Iterable[Mapping[str, Any]]) -> list[EndpointStats]:
    """Durations per endpoint (the path when the app named none), most total time first.

    >>> metas = [{"endpoint": "feed", "duration_ms": ms, "sql_ms": 1.0} for ms in (10, 20, 30)]
    >>> aggregate(metas)[0]
    EndpointStats(endpoint='feed', count=3, median_ms=20, p95_ms=30, total_ms=60, sql_ms=3.0)
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for meta in metas:
        groups[meta.get("endpoint") or meta["path"]].append(meta)
    stats = []
    for endpoint, group in groups.items():
        durations = sorted(meta["duration_ms"] for meta in group)
        stats.append(
            EndpointStats(
                endpoint=endpoint,
                count=len(durations),
                median_ms=statistics.median(durations),
                # Nearest rank: a duration that was observed, however few there are.
                p95_ms=durations[math.ceil(0.95 * len(durations)) - 1],
                total_ms=sum(durations),
                sql_ms=sum(meta["sql_ms"] for meta in group),
            )
        )
    return sorted(stats, key=lambda s: s.total_ms, reverse=True)


def _html(title: str, *body: object) -> _Response:
    # JSON may hold half a surrogate pair ("\ud800"), which no UTF-8 page can: shown as "?".
    return _Response("200 OK", page(title, *body).encode(errors="replace"), _HTML_HEADERS)


def _unavailable(reason: str) -> _Response:
    body = page(
        "Profiles unavailable", element("h1", "Profiles unavailable"), element("p", reason)
    ).encode()
    return _Response("503 Service Unavailable", body, [*_HTML_HEADERS, ("Retry-After", "10")])


def _not_found() -> _Response:
    body = page("Not found", element("h1", "No such profile or page")).encode()
    return _Response("404 Not Found", body, _HTML_HEADERS)


def _unreadable_data(profile_id: str) -> _Response:
    """The answer for a profile whose data its engine cannot read: a file cut short or
    overwritten. Engines fail on such bytes with whatever their parser raises; the log keeps
    it, in case it is the engine that is wrong."""
    logger.warning(
        "request_profiler: the data of profile %s cannot be read", profile_id, exc_info=True
    )
    return _damaged()


def _damaged() -> _Response:
    body = page(
        "Profile unreadable",
        element("h1", "Profile unreadable"),
        element("p", "This profile cannot be read: its stored copy is damaged."),
    ).encode()
    return _Response("404 Not Found", body, _HTML_HEADERS)


def _nav(base: str) -> Markup:
    return element(
        "nav",
        element("a", "Recent", href=f"{base}/"),
        element("a", "Slowest", href=f"{base}/?sort=duration"),
        element("a", "By endpoint", href=f"{base}/endpoints"),
    )


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _target(meta: Mapping[str, Any]) -> str:
    return f"{meta['path']}?{meta['query']}" if meta["query"] else meta["path"]


def _host(meta: Mapping[str, Any]) -> str:
    return meta.get("host") or "—"  # profiles saved before the host was recorded have none


def _status(meta: Mapping[str, Any]) -> str:
    return "—" if meta["status"] is None else str(meta["status"])


def _ms(value: float) -> str:
    return f"{value:.1f}"
