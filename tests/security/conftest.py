"""Fixtures of the security tests: a real browser, and the profiler served over real HTTP.

    def test_something(chromium, live):
        dom = chromium.dump_dom(live.viewer_url + "/_profiler/")

``served`` is a :class:`ProfilerMiddleware` with the test secret around
:func:`echoing_app`, an application that puts request text everywhere a
profile keeps it; ``live`` answers it with werkzeug's HTTP server on two free
loopback ports: ``viewer_url`` stands for a token holder's browser (every request there
carries the token, as the ``_profile`` cookie would), ``site_url`` for anyone
else. Profiles are made in-process with :func:`profile_request`, so the
hostile text is stored exactly as given.
"""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from request_profiler import ENDPOINT_KEY, ProfilerMiddleware, make_token, record_sql
from werkzeug.serving import make_server

from tests.conftest import require_binary
from tests.profiler.helpers import SECRET, run, stored

from .browser import Chromium


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Debian's chromium; skipped without it (a failure under REQUIRE_SERVICES=1)."""
    return Chromium(require_binary("chromium"))


def echoing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A careless application: request headers name its endpoint, go into its SQL and its errors.

    ``X-Endpoint``, ``X-Sql`` and ``X-Error`` carry the text; what it does
    with them is what any app may do with any request text.
    """
    if "HTTP_X_ENDPOINT" in environ:
        environ[ENDPOINT_KEY] = environ["HTTP_X_ENDPOINT"]
    if "HTTP_X_SQL" in environ:
        record_sql(f"SELECT * FROM episodes WHERE title = '{environ['HTTP_X_SQL']}'", 0.001)
    if "HTTP_X_ERROR" in environ:
        raise LookupError(environ["HTTP_X_ERROR"])
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok"]


@dataclass
class Served:
    middleware: ProfilerMiddleware
    token: str
    store_dir: Path
    #: As a token holder: every request carries the token.
    viewer_url: str = ""
    #: As anyone: requests carry what the browser sends and nothing more.
    site_url: str = ""
    #: (method, path, status, Set-Cookie or None) of every request the site URL answered.
    answered: list[tuple[str, str, str, str | None]] = field(default_factory=list)


class _Recorder:
    """Notes what the site answered (what a CSRF test needs to see)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], served: Served) -> None:
        self.app = app
        self.served = served

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        def noting(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            cookie = next((v for k, v in headers if k.lower() == "set-cookie"), None)
            self.served.answered.append(
                (environ["REQUEST_METHOD"], environ["PATH_INFO"], status, cookie)
            )
            return start_response(status, headers, exc_info)

        return self.app(environ, noting)


class _TokenHolder:
    """Adds the token to every request, as a browser holding the profiling cookie would."""

    def __init__(self, app: Callable[..., Iterable[bytes]], token: str) -> None:
        self.app = app
        self.token = token

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        environ["HTTP_X_PROFILE_TOKEN"] = self.token
        return self.app(environ, start_response)


def auto_post_page(action: str, fields: dict[str, str]) -> bytes:
    """A page whose script posts a form at once, as a page would behind a visitor's back."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return (
        f'<!DOCTYPE html><form method="post" action="{html.escape(action)}">{inputs}</form>'
        "<script>document.forms[0].submit()</script>"
    ).encode()


def auto_post_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/post?action=URL&name=value...``: the auto-posting page, from wherever it is served."""
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    body = auto_post_page(query.pop("action"), query)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]


class _Harness:
    """The site as served, plus the test's own ``/_test/post`` page on the same origin."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if environ["PATH_INFO"] == "/_test/post":
            return auto_post_app(environ, start_response)
        return self.app(environ, start_response)


@contextmanager
def serving(app: Callable[..., Iterable[bytes]], host: str = "127.0.0.1") -> Iterator[str]:
    """Answer HTTP on a free loopback port with ``app``; yields its URL, named ``host``."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll: shutdown() waits for the loop to notice.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def token() -> str:
    return make_token(SECRET, 600)


@pytest.fixture
def served(tmp_path: Path, token: str) -> Served:
    """The middleware around :func:`echoing_app`, called in-process (no URLs)."""
    store_dir = tmp_path / "profiles"
    middleware = ProfilerMiddleware(echoing_app, secret=SECRET, directory=store_dir)
    return Served(middleware, token, store_dir)


@pytest.fixture
def live(served: Served) -> Iterator[Served]:
    """``served``, answered over HTTP too (``viewer_url``, ``site_url``)."""
    with (
        serving(_TokenHolder(served.middleware, served.token)) as served.viewer_url,
        serving(_Recorder(_Harness(served.middleware), served)) as served.site_url,
    ):
        yield served


def profile_request(
    served: Served, path: str = "/", *, carry_token: bool = True, **options: Any
) -> dict[str, Any]:
    """Profile one request; returns its stored metadata.

    The token goes in the ``X-Profile-Token`` header unless ``carry_token`` is
    False (the request then carries it some other way, or is sampled). The
    application's own error (``X-Error``) is what the profile records, not a
    test failure.
    """
    if carry_token:
        options["headers"] = {"X-Profile-Token": served.token, **options.get("headers", {})}
    with contextlib.suppress(LookupError):
        run(served.middleware, path, **options)
    return stored(served.store_dir)[0]
