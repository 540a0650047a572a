"""What request_profiler costs, against the bare app and pyinstrument's own Flask recipe.

    pytest tests/benchmarks/test_profiler_bench.py --benchmark-only

``profiler-off``: a cheap Flask request bare, through the middleware with no
options, with a secret but no token (the production set-up), and with 1 %
sampling. ``profiler-on``: one profiled request, stored (pyinstrument and
cProfile) or answered with the profile's page (``inline``), next to
pyinstrument's documented before/after_request recipe, which also renders the
page on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, make_response, request
from pyinstrument import Profiler
from request_profiler import ProfilerMiddleware, make_token
from werkzeug.test import EnvironBuilder

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

    @app.before_request
    def before_request() -> None:
        if "profile" in request.args:
            g.profiler = Profiler()
            g.profiler.start()

    @app.after_request
    def after_request(response):
        if not hasattr(g, "profiler"):
            return response
        g.profiler.stop()
        return make_response(g.profiler.output_html())

    return app


def requester(app: Callable[..., Iterable[bytes]], **builder_options: Any) -> Callable[[], bytes]:
    """A function that serves one request like a server: a fresh environ, iterate, close."""
    environ = EnvironBuilder(path="/", **builder_options).get_environ()

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
    middleware = ProfilerMiddleware(
        hello_flask().wsgi_app, secret=SECRET, directory=store_dir, profiler=engine, max_profiles=50
    )
    serve = requester(middleware, headers={"X-Profile-Token": TOKEN})
    served = []

    def counted() -> bytes:
        served.append(1)
        return serve()

    assert benchmark(counted) == b"hello"
    # Every request stored its profile, and the store kept the newest 50
    # (a short budget may run fewer).
    assert len(list(store_dir.glob("*.profile"))) == min(50, len(served))


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
