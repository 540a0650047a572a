"""Requests that are not profiled are served exactly as by the bare application."""

from __future__ import annotations

import math
import time

import pytest
from request_profiler import ProfilerMiddleware, make_token

from .helpers import OTHER_SECRET, SECRET, environ_for, hello_app, run

VALID = make_token(SECRET, 600)
BAD_TOKENS = {
    "garbage": "not-a-token",
    "non-ascii garbage": "\xff\xfe.\x00sig",
    "empty signature": VALID.split(".")[0] + ".",
    "forged with another secret": make_token(OTHER_SECRET, 600),
    "expired": make_token(SECRET, 60, now=time.time() - 120),
    "tampered expiry": str(int(VALID.split(".")[0]) + 1) + "." + VALID.split(".")[1],
    # Validly signed and unexpired, but longer than MAX_TOKEN_LENGTH: refused unread.
    "huge": make_token(SECRET, 10**600, now=0, max_ttl=math.inf),
}


def request_with(source: str, token: str) -> dict:
    if source == "header":
        return {"headers": {"X-Profile-Token": token}}
    if source == "query":
        return {"query_string": {"_profile": token, "page": "2"}}
    return {"headers": {"Cookie": f"theme=dark; _profile={token}"}}


def test_no_options_returns_the_apps_own_iterable() -> None:
    body = [b"exactly this list"]

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    assert ProfilerMiddleware(app)(environ_for("/"), lambda status, headers: None) is body


@pytest.mark.parametrize("source", ["header", "query", "cookie"])
@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_invalid_tokens_leave_the_request_untouched(
    make_middleware, store_dir, source: str, name: str
) -> None:
    options = request_with(source, BAD_TOKENS[name])

    assert run(make_middleware(), "/page", **options) == run(hello_app, "/page", **options)
    assert not store_dir.exists()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"query_string": f"_profile=garbage&_profile={VALID}"},
            id="repeated query, first invalid",
        ),
        pytest.param(
            {"headers": {"Cookie": f"_profile=garbage; _profile={VALID}"}},
            id="repeated cookie, first invalid",
        ),
        # Servers join a repeated header with commas.
        pytest.param({"headers": {"X-Profile-Token": f"{VALID}, {VALID}"}}, id="repeated header"),
    ],
)
def test_repeated_tokens_count_by_their_first_value(
    make_middleware, store_dir, options: dict
) -> None:
    assert run(make_middleware(), "/", **options) == run(hello_app, "/", **options)
    assert not store_dir.exists()


#: What nginx's token path adds to a request (deploy/nginx/site.conf.template, @profile).
SENT_BY_THE_FRONT_SERVER = {"REQUEST_PROFILER_ACCEL_REDIRECT": "@unprofiled"}


def counting(app):
    calls = []

    def counted(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return app(environ, start_response)

    return counted, calls


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("source", ["header", "query", "cookie"])
@pytest.mark.parametrize("name", ["garbage", "forged with another secret", "expired"])
def test_an_invalid_token_sent_by_the_front_server_goes_back_to_it(
    make_middleware, store_dir, method: str, source: str, name: str
) -> None:
    app, calls = counting(hello_app)
    options = request_with(source, BAD_TOKENS[name])

    result = run(
        make_middleware(app, sample_rate=1.0),  # not even sampled: nginx serves it
        "/episodes/",
        method=method,
        environ_overrides=SENT_BY_THE_FRONT_SERVER,
        **options,
    )

    assert result == ("200 OK", [("X-Accel-Redirect", "@unprofiled"), ("Content-Length", "0")], b"")
    assert calls == [] and not store_dir.exists()


def test_the_front_servers_redirect_leaves_other_requests_alone(make_middleware, store_dir) -> None:
    app, calls = counting(hello_app)
    middleware = make_middleware(app)
    front = {"environ_overrides": SENT_BY_THE_FRONT_SERVER}

    # A valid token is profiled; nginx would pass a POST on to the app, so the app answers it.
    assert run(middleware, "/valid", **request_with("cookie", VALID), **front).header(
        "X-Profile-Id"
    )
    bad = request_with("cookie", "garbage")
    assert run(middleware, "/post", method="POST", **bad, **front).body == b"hello /post"
    # The viewer's own paths stay the viewer's: without a valid token, the site's answer.
    assert run(middleware, "/_profiler/", **bad, **front).body == b"hello /_profiler/"
    # Without the front server's variable (a client cannot set one), the app answers.
    assert run(middleware, "/page", **bad).body == b"hello /page"
    # And switched off, it is ignored.
    off = make_middleware(app, accel_redirect_key=None)
    assert run(off, "/off", **bad, **front).body == b"hello /off"
    assert calls == ["/valid", "/post", "/_profiler/", "/page", "/off"]


def test_without_a_secret_even_valid_tokens_and_the_viewer_path_reach_the_app(store_dir) -> None:
    middleware = ProfilerMiddleware(hello_app, directory=store_dir)

    for path in ("/", "/_profiler/"):
        options = request_with("header", VALID)
        assert run(middleware, path, **options) == run(hello_app, path, **options)
    assert not store_dir.exists()


def test_a_path_that_only_starts_like_the_viewer_reaches_the_app(make_middleware) -> None:
    assert run(make_middleware(), "/_profilerish") == run(hello_app, "/_profilerish")


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        ProfilerMiddleware(hello_app, sample_rate=1.5)
    with pytest.raises(ValueError, match="store= or directory="):
        ProfilerMiddleware(hello_app, secret=SECRET)
    with pytest.raises(ValueError, match="unknown profiler"):
        ProfilerMiddleware(hello_app, profiler="yappi")
