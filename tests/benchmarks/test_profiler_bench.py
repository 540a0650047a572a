"""What request_profiler costs, against the bare app, pyinstrument's Flask recipe and Werkzeug's.

    pytest tests/benchmarks/test_profiler_bench.py --benchmark-only

``profiler-off``: a cheap Flask request bare, through the middleware with no
options, with a secret but no token (the production set-up), and with 1 %
sampling. ``profiler-on``: one profiled request, stored (pyinstrument and
cProfile) or answered with the profile's page (``inline``), next to
pyinstrument's documented before/after_request recipe, which also renders the
page on every request. ``profiler-every-request``: the site's
``/api/episodes/10`` (the lab's profiler experiment) bare, with every request
profiled and stored by request_profiler, with pyinstrument's recipe and with
Werkzeug's ProfilerMiddleware (lab.other_profilers): what one profiled request
costs each way. request_profiler's rounds include storing: each ends once the
writer's thread has stored what the round handed over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from request_profiler import DirectoryStore, ProfilerMiddleware, make_token
from werkzeug.test import EnvironBuilder

from lab.other_profilers import install_pyinstrument_recipe, install_werkzeug_profiler
from tests.conftest import make_app

SECRET = "benchmark-secret-of-at-least-32-bytes"
TOKEN = make_token(SECRET, 3600)


def hello_flask() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "hello"

    return app


def pyinstrument_recipe_app() -> Flask:
    """pyinstrument's documented Flask recipe ("Profile a web request in Flask")."""
    app = hello_flask()
    install_pyinstrument_recipe(app)
    return app


def requester(
    app: Callable[..., Iterable[bytes]], path: str = "/", **builder_options: Any
) -> Callable[[], bytes]:
    """A function that serves one request like a server: a fresh environ, iterate, close."""
    environ = EnvironBuilder(path=path, **builder_options).get_environ()

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        pass

    def serve() -> bytes:
        body = app(dict(environ), start_response)
        try:
            return b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()

    return serve


def counted(serve: Callable[[], bytes]) -> tuple[list[int], Callable[[], bytes]]:
    """``serve`` that notes each request in the returned list."""
    served: list[int] = []

    def counting() -> bytes:
        served.append(1)
        return serve()

    return served, counting


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "profiles"


@pytest.mark.benchmark(group="profiler-off")
def test_off_bare_flask(benchmark) -> None:
    assert benchmark(requester(hello_flask().wsgi_app)) == b"hello"


@pytest.mark.benchmark(group="profiler-off")
def test_off_middleware_without_options(benchmark) -> None:
    assert benchmark(requester(ProfilerMiddleware(hello_flask().wsgi_app))) == b"hello"


@pytest.mark.benchmark(group="profiler-off")
def test_off_middleware_with_secret_no_token(benchmark, store_dir) -> None:
    middleware = ProfilerMiddleware(hello_flask().wsgi_app, secret=SECRET, directory=store_dir)
    assert benchmark(requester(middleware, headers={"Cookie": "session=abc"})) == b"hello"


@pytest.mark.benchmark(group="profiler-off")
def test_off_middleware_sampling_one_percent(benchmark, store_dir) -> None:
    middleware = ProfilerMiddleware(hello_flask().wsgi_app, sample_rate=0.01, directory=store_dir)
    assert benchmark(requester(middleware)) == b"hello"


@pytest.mark.benchmark(group="profiler-on")
@pytest.mark.parametrize("engine", ["pyinstrument", "cprofile"])
def test_on_token_request_stored(benchmark, store_dir, engine: str) -> None:
    store = DirectoryStore(store_dir, max_profiles=50)
    middleware = ProfilerMiddleware(
        hello_flask().wsgi_app, secret=SECRET, store=store, profiler=engine
    )
    writer = middleware.writer
    assert writer is not None
    served, serve = counted(requester(middleware, headers={"X-Profile-Token": TOKEN}))

    assert benchmark(serve) == b"hello"
    # Every request stored its profile, and the store kept at most the newest 50, give or take
    # the profiles saved since its last amortised prune; a batch saved as one file is pruned
    # whole, so at least 50 less one batch (a short budget may run fewer).
    assert middleware.flush() and writer.dropped == 0
    kept = len(store.recent())
    assert min(50, len(served)) - writer.batch < kept < min(50, len(served)) + store.prune_every


@pytest.mark.benchmark(group="profiler-on")
def test_on_token_request_inline_page(benchmark, store_dir) -> None:
    middleware = ProfilerMiddleware(
        hello_flask().wsgi_app, secret=SECRET, directory=store_dir, max_profiles=50
    )
    serve = requester(middleware, headers={"X-Profile-Token": TOKEN, "X-Profile-View": "inline"})
    assert b"pyinstrumentHTMLRenderer" in benchmark(serve)


@pytest.mark.benchmark(group="profiler-on")
def test_on_pyinstrument_flask_recipe(benchmark) -> None:
    serve = requester(pyinstrument_recipe_app().wsgi_app, query_string="profile")
    assert b"pyinstrumentHTMLRenderer" in benchmark(serve)


# --- Every request profiled, on the site's API route --------------------------------------

EPISODE_PATH = "/api/episodes/10"


@pytest.fixture
def site_app(seeded_sqlite_app, tmp_path: Path) -> Callable[[], Flask]:
    """A fresh app on the benchmarks' seeded database, to wrap without touching the shared one."""
    database_url = seeded_sqlite_app.config["DATABASE_URL"]
    return lambda: make_app(database_url, tmp_path)


@pytest.mark.benchmark(group="profiler-every-request")
def test_every_request_bare(benchmark, site_app) -> None:
    assert b'"number":10' in benchmark(requester(site_app().wsgi_app, path=EPISODE_PATH))


@pytest.mark.benchmark(group="profiler-every-request")
def test_every_request_request_profiler_stored(benchmark, site_app, store_dir) -> None:
    store = DirectoryStore(store_dir, max_profiles=50)
    middleware = ProfilerMiddleware(site_app().wsgi_app, sample_rate=1.0, store=store)
    # The writer stores in batches, and a request that finds a batch queued waits for it to be
    # stored (as in a saturated worker): the mean includes the storing, a batch at a time.
    served, serve = counted(requester(middleware, path=EPISODE_PATH))
    assert b'"number":10' in benchmark(serve)
    assert middleware.flush() and middleware.writer is not None
    assert middleware.writer.dropped == 0
    assert len(store.recent()) > min(50, len(served)) - middleware.writer.batch


@pytest.mark.benchmark(group="profiler-every-request")
def test_every_request_pyinstrument_recipe(benchmark, site_app) -> None:
    app = site_app()
    install_pyinstrument_recipe(app)
    serve = requester(app.wsgi_app, path=EPISODE_PATH, query_string="profile")
    assert b"pyinstrumentHTMLRenderer" in benchmark(serve)


@pytest.mark.benchmark(group="profiler-every-request")
def test_every_request_werkzeug_profiler(benchmark, site_app, tmp_path: Path) -> None:
    app = site_app()
    install_werkzeug_profiler(app, tmp_path / "werkzeug")
    assert b'"number":10' in benchmark(requester(app.wsgi_app, path=EPISODE_PATH))
    assert list((tmp_path / "werkzeug").glob("*.prof"))
