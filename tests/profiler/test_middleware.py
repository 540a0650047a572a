"""Profiled requests: headers, whole-request coverage, streaming, errors, concurrency, sampling."""

from __future__ import annotations

import gc
import pstats
import re
import subprocess
import sys
import threading
import time

import pytest
from request_profiler import ENDPOINT_KEY, DirectoryStore, Profiler, ProfilerMiddleware, make_token
from request_profiler.store import PROFILE_ID
from werkzeug.test import Client

from .helpers import (
    OTHER_SECRET,
    SECRET,
    assert_runs_only_its_own_scripts,
    environ_for,
    hello_app,
    run,
    stored,
)


def streaming_app(events: list[str], chunks: int = 3, pause: float = 0.0):
    """A generator app that logs when it produces each chunk and when it is closed."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for number in range(chunks):
                events.append(f"produce {number}")
                yield f"chunk {number}\n".encode()
                time.sleep(pause)
        except GeneratorExit:
            events.append("disconnected")
            raise
        finally:
            events.append("closed")

    return app


def start(middleware, path: str = "/", **options):
    """Call the middleware like a server, without iterating: (response iterable, headers)."""
    response = {}

    def start_response(status, headers, exc_info=None):
        response.update(status=status, headers=dict(headers))

    return middleware(environ_for(path, **options), start_response), response


@pytest.mark.parametrize(
    "carrier",
    [
        lambda token: {"headers": {"X-Profile-Token": token}},
        lambda token: {"query_string": {"_profile": token}},
        lambda token: {"headers": {"Cookie": f"_profile={token}"}},
    ],
    ids=["header", "query", "cookie"],
)
def test_a_token_request_is_profiled_and_says_where(
    make_middleware, store_dir, token, carrier
) -> None:
    options = carrier(token)
    bare = run(hello_app, "/episodes", **options)

    result = run(make_middleware(), "/episodes", **options)

    assert (result.status, result.body) == (bare.status, bare.body)
    assert result.headers[: len(bare.headers)] == bare.headers
    profile_id = result.header("X-Profile-Id")
    assert PROFILE_ID.fullmatch(profile_id)
    assert re.fullmatch(r"app;dur=\d+\.\d", result.header("Server-Timing"))
    [meta] = stored(store_dir)
    assert meta["id"] == profile_id
    assert (meta["method"], meta["path"], meta["status"]) == ("GET", "/episodes", 200)
    assert (meta["trigger"], meta["profiler"], meta["body_complete"]) == (
        "token",
        "pyinstrument",
        True,
    )


def cacheable_app(environ, start_response):
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Cache-Control", "public, max-age=60"), ("ETag", '"1"')],
    )
    return [b"the same for everyone"]


def test_a_profiled_answer_is_never_stored_by_a_cache(make_middleware, token) -> None:
    """It carries the token holder's X-Profile-Id and timings: no shared cache (a CDN, a proxy)
    may keep it for others, nor the browser reuse it for a request that should be profiled."""
    bare = run(cacheable_app, "/api", headers={"X-Profile-Token": token})

    profiled = run(make_middleware(cacheable_app), "/api", headers={"X-Profile-Token": token})

    assert profiled.body == bare.body
    assert [value for key, value in profiled.headers if key.lower() == "cache-control"] == [
        "no-store"
    ]
    assert profiled.header("ETag") == '"1"'  # everything else as the app sent it
    # Sampled answers say nothing of the profiler: they keep the app's Cache-Control.
    sampled = run(make_middleware(cacheable_app, sample_rate=1.0), "/api")
    assert sampled.headers == bare.headers


def test_a_profiled_answer_sends_no_referer_on(make_middleware, token) -> None:
    """Its URL may hold the token (?_profile=): its links, styles and scripts must not carry it
    to the next request's Referer (and from there to logs, or another site)."""

    def app(environ, start_response):
        start_response("200 OK", [("Referrer-Policy", "unsafe-url")])
        return [b"<a href='https://elsewhere.example/'>"]

    profiled = run(make_middleware(app), "/", query_string={"_profile": token})

    assert [value for key, value in profiled.headers if key == "Referrer-Policy"] == ["no-referrer"]


def test_a_token_profile_is_stored_by_the_time_the_request_ends(
    make_middleware, store_dir, token
) -> None:
    """Its X-Profile-Id is a promise: the viewer, in any other worker process (which cannot
    flush this one's writer), finds it as soon as the answer is complete, not after the
    writer's batching delay (commit d39c9ec: how often the viewer missed it before)."""
    body, response = start(make_middleware(), headers={"X-Profile-Token": token})
    b"".join(body)
    body.close()

    # Read directly, without waiting for the writer (stored() would flush it).
    assert [meta["id"] for meta in DirectoryStore(store_dir).recent()] == [
        response["headers"]["X-Profile-Id"]
    ]


def test_the_body_streams_chunk_by_chunk_and_the_profile_ends_in_close(
    make_middleware, store_dir, token
) -> None:
    events: list[str] = []
    body, response = start(
        make_middleware(streaming_app(events)), headers={"X-Profile-Token": token}
    )
    chunks = iter(body)

    assert next(chunks) == b"chunk 0\n"
    assert events == ["produce 0"]  # the second chunk is not produced yet: nothing is buffered
    assert "X-Profile-Id" in response["headers"]  # headers left before the body
    assert next(chunks) == b"chunk 1\n"
    assert events == ["produce 0", "produce 1"]
    assert list(chunks) == [b"chunk 2\n"]
    assert not store_dir.exists()  # the profile is still running

    body.close()

    assert events[-1] == "closed"
    [meta] = stored(store_dir)
    assert meta["body_complete"] is True


def test_the_profile_covers_the_body_and_server_timing_only_the_start(
    make_middleware, store_dir, token
) -> None:
    result = run(
        make_middleware(streaming_app([], chunks=3, pause=0.03)), headers={"X-Profile-Token": token}
    )

    [meta] = stored(store_dir)
    assert meta["duration_ms"] >= 90
    assert meta["response_ms"] < 30
    assert result.header("Server-Timing") == f"app;dur={meta['response_ms']:.1f}"


def test_a_client_that_disconnects_mid_stream_closes_the_app_and_keeps_the_profile(
    make_middleware, store_dir, token
) -> None:
    events: list[str] = []
    middleware = make_middleware(streaming_app(events, chunks=100))
    body, _ = start(middleware, headers={"X-Profile-Token": token})

    assert next(iter(body)) == b"chunk 0\n"
    body.close()  # what a server does when the client goes away

    assert events == ["produce 0", "disconnected", "closed"]
    [meta] = stored(store_dir)
    assert meta["body_complete"] is False
    assert run(middleware, headers={"X-Profile-Token": token}).header(
        "X-Profile-Id"
    )  # profiling still works


def test_an_exception_from_the_app_is_reraised_unchanged_and_the_profile_kept(
    make_middleware, store_dir, token
) -> None:
    error = LookupError("no such episode")

    def failing_app(environ, start_response):
        raise error

    with pytest.raises(LookupError) as raised:
        run(make_middleware(failing_app), "/episodes/9", headers={"X-Profile-Token": token})

    assert raised.value is error
    [meta] = stored(store_dir)
    assert meta["error"] == "LookupError: no such episode"
    assert meta["status"] is None


def test_an_exception_while_streaming_is_reraised_and_the_partial_profile_kept(
    make_middleware, store_dir, token
) -> None:
    def breaking_app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise OSError("backend gone")

    body, _ = start(make_middleware(breaking_app), headers={"X-Profile-Token": token})
    chunks = iter(body)
    assert next(chunks) == b"first"
    with pytest.raises(OSError, match="backend gone"):
        next(chunks)
    body.close()

    [meta] = stored(store_dir)
    assert (meta["status"], meta["error"], meta["body_complete"]) == (
        200,
        "OSError: backend gone",
        False,
    )


def test_close_is_forwarded_to_an_iterable_that_is_not_a_generator(make_middleware, token) -> None:
    class Body:
        closed = 0

        def __iter__(self):
            return iter([b"a", b"b"])

        def close(self):
            Body.closed += 1

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    assert run(make_middleware(app), headers={"X-Profile-Token": token}).body == b"ab"
    assert Body.closed == 1


def test_the_legacy_write_callable_still_works(make_middleware, token) -> None:
    def writing_app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"written ")
        return [b"returned"]

    assert (
        run(make_middleware(writing_app), headers={"X-Profile-Token": token}).body
        == b"written returned"
    )


def test_a_request_arriving_during_a_profile_is_served_unprofiled_at_once(
    make_middleware, store_dir, token
) -> None:
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(5)
        return hello_app(environ, start_response)

    middleware = make_middleware(app)
    results = {}
    slow = threading.Thread(
        target=lambda: results.update(
            slow=run(middleware, "/slow", headers={"X-Profile-Token": token})
        )
    )
    slow.start()
    try:
        assert entered.wait(5)
        fast = run(middleware, "/fast", headers={"X-Profile-Token": token})
        assert slow.is_alive()  # served while the first profile still runs: not serialised
    finally:
        release.set()
        slow.join(5)

    assert fast == run(hello_app, "/fast", headers={"X-Profile-Token": token})
    assert results["slow"].header("X-Profile-Id")
    assert [meta["path"] for meta in stored(store_dir)] == ["/slow"]


def test_sampled_requests_are_profiled_silently(make_middleware, store_dir) -> None:
    middleware = make_middleware(sample_rate=1.0)

    assert run(middleware, "/sampled") == run(hello_app, "/sampled")
    [meta] = stored(store_dir)
    assert (meta["path"], meta["trigger"]) == ("/sampled", "sample")


def test_sampling_works_without_a_secret(store_dir) -> None:
    run(ProfilerMiddleware(hello_app, sample_rate=1.0, directory=store_dir), "/")

    assert len(stored(store_dir)) == 1


def test_the_sample_rate_is_a_fraction_of_requests(make_middleware, store_dir) -> None:
    middleware = make_middleware(sample_rate=0.25, max_profiles=1000)
    for _ in range(400):
        run(middleware, "/")

    assert 50 <= len(stored(store_dir)) <= 150  # mean 100, standard deviation under 9


def test_slow_ms_keeps_only_slow_sampled_profiles_but_every_token_profile(
    make_middleware, store_dir, token
) -> None:
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.06)
        return hello_app(environ, start_response)

    middleware = make_middleware(app, sample_rate=1.0, slow_ms=40)
    run(middleware, "/fast")
    run(middleware, "/slow")
    run(middleware, "/fast-but-asked", headers={"X-Profile-Token": token})

    assert [(meta["path"], meta["trigger"]) for meta in stored(store_dir)] == [
        ("/fast-but-asked", "token"),
        ("/slow", "sample"),
    ]


def test_a_requested_profile_outlives_any_number_of_sampled_ones(
    make_middleware, store_dir, token
) -> None:
    """On call asks for one profile while sampling fills the store: that profile stays there
    for the viewer however many sampled ones follow."""
    middleware = make_middleware(sample_rate=1.0, max_profiles=5)
    client = Client(middleware)
    for _ in range(8):  # still queued when the token request comes: handed over with its own
        client.get("/queued").close()
    asked = run(middleware, "/asked", headers={"X-Profile-Token": token}).header("X-Profile-Id")
    for _ in range(20):
        run(middleware, "/sampled")

    kept = stored(store_dir)
    assert len(kept) == 5 and asked in [meta["id"] for meta in kept]
    page = run(middleware, f"/_profiler/{asked}", headers={"X-Profile-Token": token})
    assert page.status == "200 OK"


@pytest.mark.parametrize(
    "options",
    [{"query_string": "_profile_view=inline"}, {"headers": {"X-Profile-View": "inline"}}],
    ids=["query", "header"],
)
def test_the_inline_view_replaces_the_response_after_running_it_whole(
    make_middleware, store_dir, token, options
) -> None:
    events: list[str] = []
    options = {**options, "headers": {**options.get("headers", {}), "X-Profile-Token": token}}

    result = run(make_middleware(streaming_app(events, pause=0.01)), "/feed", **options)

    assert events == ["produce 0", "produce 1", "produce 2", "closed"]
    assert result.status == "200 OK"
    assert result.header("Content-Type") == "text/html; charset=utf-8"
    assert b"pyinstrumentHTMLRenderer" in result.body and b"chunk 0" not in result.body
    assert_runs_only_its_own_scripts(result.body.decode(), result.header("Content-Security-Policy"))
    [meta] = stored(store_dir)
    assert result.header("X-Profile-Id") == meta["id"]
    assert meta["duration_ms"] >= 30 and meta["body_complete"] is True


def test_the_inline_view_needs_a_token(make_middleware, store_dir) -> None:
    options = {"query_string": "_profile_view=inline"}
    assert run(make_middleware(sample_rate=1.0), **options) == run(hello_app, **options)


def test_the_inline_view_reraises_the_apps_exception(make_middleware, store_dir, token) -> None:
    def failing_app(environ, start_response):
        raise KeyError("x")

    with pytest.raises(KeyError):
        run(make_middleware(failing_app), query_string=f"_profile={token}&_profile_view=inline")
    assert stored(store_dir)[0]["error"] == "KeyError: 'x'"


def test_cprofile_records_every_call_in_pstats_format(make_middleware, store_dir, token) -> None:
    def counted_app(environ, start_response):
        return hello_app(environ, start_response)

    run(make_middleware(counted_app, profiler="cprofile"), headers={"X-Profile-Token": token})

    [meta] = stored(store_dir)
    assert meta["profiler"] == "cprofile"
    _, data = DirectoryStore(store_dir).load(meta["id"])
    (store_dir / "export.pstats").write_bytes(data)
    stats = pstats.Stats(str(store_dir / "export.pstats"))
    assert any(name == "counted_app" for _, _, name in stats.stats)


class WallClockProfiler(Profiler):
    """A third engine in a dozen lines: proves the interface is all the middleware needs."""

    name = "wallclock"
    formats = {}

    def start(self, description: str) -> None:
        self._started = time.perf_counter()
        self._description = description

    def stop(self) -> bytes:
        return f"{self._description} took {time.perf_counter() - self._started:.6f}s".encode()

    def render_html(self, data: bytes) -> str:
        return f"<!DOCTYPE html><title>wallclock</title><p>{data.decode()}</p>"

    def export(self, data: bytes, fmt: str) -> bytes:
        raise KeyError(fmt)


def test_another_profiler_plugs_in(make_middleware, store_dir, token) -> None:
    middleware = make_middleware(profiler=WallClockProfiler())
    run(middleware, "/plugged", headers={"X-Profile-Token": token})

    [meta] = stored(store_dir)
    page = Client(middleware).get(
        f"/_profiler/{meta['id']}/profile.html", headers={"X-Profile-Token": token}
    )
    assert re.search(r"GET /plugged took \d\.\d{6}s", page.text)


def test_the_endpoint_named_by_the_app_is_recorded(make_middleware, store_dir, token) -> None:
    def app(environ, start_response):
        environ[ENDPOINT_KEY] = "episodes.show"
        return hello_app(environ, start_response)

    run(make_middleware(app), headers={"X-Profile-Token": token})

    assert stored(store_dir)[0]["endpoint"] == "episodes.show"


def test_the_endpoint_option_names_profiled_requests_only(
    make_middleware, store_dir, token
) -> None:
    asked: list[str] = []

    def endpoint(environ: dict) -> str:
        asked.append(environ["PATH_INFO"])
        return "episodes.show"

    middleware = make_middleware(endpoint=endpoint)
    for _ in range(20):  # unprofiled: the function is never called
        assert run(middleware, "/plain")[0] == "200 OK"
    run(middleware, "/profiled", headers={"X-Profile-Token": token})

    assert asked == ["/profiled"]
    assert stored(store_dir)[0]["endpoint"] == "episodes.show"


def test_a_failing_endpoint_function_costs_only_the_name(make_middleware, store_dir, token) -> None:
    def endpoint(environ: dict) -> str:
        raise RuntimeError("no such view")

    status, _, body = run(make_middleware(endpoint=endpoint), headers={"X-Profile-Token": token})

    assert status == "200 OK" and body == b"hello /"
    [meta] = stored(store_dir)
    assert meta["endpoint"] is None


def test_one_profile_at_a_time_holds_across_middlewares(
    make_middleware, store_dir, tmp_path
) -> None:
    other_token = make_token(OTHER_SECRET, 60)
    inner_results = []

    def app(environ, start_response):
        inner_results.append(run(inner, "/inner", headers={"X-Profile-Token": other_token}))
        return hello_app(environ, start_response)

    inner = ProfilerMiddleware(hello_app, secret=OTHER_SECRET, directory=tmp_path / "inner")
    run(make_middleware(app), headers={"X-Profile-Token": make_token(SECRET, 60)})

    assert inner_results[0].header("X-Profile-Id") is None
    assert len(stored(store_dir)) == 1


def test_a_response_never_closed_still_ends_its_profile_when_dropped(
    make_middleware, store_dir, token
) -> None:
    client = Client(make_middleware())
    response = client.get(
        "/unclosed", headers={"X-Profile-Token": token}
    )  # werkzeug leaves it open
    assert response.get_data() == b"hello /unclosed"

    del response
    gc.collect()
    # Ended by the next request (see test_a_dropped_response_never_crashes_the_process), which
    # is profiled too: the process's one profile at a time was given back.
    client.get("/next", headers={"X-Profile-Token": token}).close()

    assert sorted(meta["path"] for meta in stored(store_dir)) == ["/next", "/unclosed"]


# A WSGI app that sets a context variable per request, as Flask does, behind the middleware,
# under a test client that never closes its responses; the collector runs at almost every
# allocation, so also while a context variable is being set.
_DROPPING_CLIENT = """
import contextvars, gc, sys
from request_profiler import ProfilerMiddleware
from request_profiler.profilers import PyinstrumentProfiler
from werkzeug.test import Client

current = contextvars.ContextVar("current")

def app(environ, start_response):
    current.set(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"hello"])

profiler = PyinstrumentProfiler(timer_start=False)  # sampling from the start of each request
client = Client(ProfilerMiddleware(app, sample_rate=1.0, profiler=profiler, directory=sys.argv[1]))
gc.set_threshold(1)
for n in range(int(sys.argv[2])):
    response = client.get(f"/{n}")
    response.itself = response  # as Flask's are, in a cycle: only the collector frees it
print(response.status_code)
"""


def test_a_dropped_response_never_crashes_the_process(tmp_path) -> None:
    """Ending a profile from the body's __del__ set context variables inside the collector,
    in the middle of the app setting one. That corrupted CPython's context mapping: here, an
    object of the wrong type within a few requests; under the site, with the collector's
    default thresholds, a segmentation fault after 6,000 to 14,000."""
    store_dir = tmp_path / "profiles"
    child = subprocess.run(
        [sys.executable, "-c", _DROPPING_CLIENT, str(store_dir), "600"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (child.returncode, child.stdout.strip()) == (0, "200"), child.stderr[-2000:]
    assert stored(store_dir)  # and the profiles were ended and kept
