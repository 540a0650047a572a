"""The site's wiring: PROFILER_* settings, the endpoint names, its SQL, the token command."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from flask import Blueprint, Flask
from request_profiler import PostgresStore, ProfilerMiddleware, TokenVerifier, make_token

from tests.conftest import make_app, run_flask
from webapp.db import get_session
from webapp.params import single_arg
from webapp.profiler import install_profiler
from webapp.settings import SettingsError

from .helpers import SECRET, run, stored


def site(tmp_path: Path, **settings: object) -> Flask:
    app = make_app(
        f"sqlite:///{tmp_path}/site.sqlite3",
        tmp_path,
        PROFILER_DIR=str(tmp_path / "profiles"),
        **settings,
    )
    if "request_profiler" not in app.extensions:  # until create_app installs it itself
        install_profiler(app)
    return app


def test_profiling_is_not_even_wrapped_when_off(tmp_path: Path) -> None:
    app = site(tmp_path)

    assert not isinstance(app.wsgi_app, ProfilerMiddleware)
    assert app.extensions["request_profiler"] is None


def with_probe_routes(app: Flask) -> Flask:
    """``app`` with two routes of the test's own, which query through the site's data layer:
    the wiring is checked whatever records the site holds (a copy of this template has other
    routes and tables than the podcast's)."""
    probe = Blueprint("probe", __name__)

    @probe.get("/probe/<int:number>")
    def item(number: int) -> str:
        row = get_session().fetch_one("SELECT %s + 1 AS next_number", (number,))
        assert row is not None
        return str(row["next_number"])

    @probe.get("/probe/search")
    def search() -> str:
        return single_arg("q") or ""

    app.register_blueprint(probe)
    return app


def test_a_token_request_lists_the_flask_endpoint_and_the_sites_queries(tmp_path: Path) -> None:
    app = with_probe_routes(site(tmp_path, PROFILER_SECRET=SECRET))

    result = run(app, "/probe/3", headers={"X-Profile-Token": make_token(SECRET, 60)})

    assert result.status == "200 OK" and result.header("X-Profile-Id")
    assert result.body == b"4"
    [meta] = stored(tmp_path / "profiles")
    assert meta["endpoint"] == "probe.item"
    assert meta["sql_count"] == 1 and "AS next_number" in meta["sql"][0][0]


def test_each_profile_names_the_endpoint_flask_routed_it_to(tmp_path: Path) -> None:
    app = with_probe_routes(site(tmp_path, PROFILER_SECRET=SECRET))
    token = {"X-Profile-Token": make_token(SECRET, 60)}
    for path in ("/probe/3", "/no/such/page", "/probe/search?q=python"):
        run(app, path, headers=token)

    endpoints = {meta["path"]: meta["endpoint"] for meta in stored(tmp_path / "profiles")}
    assert endpoints == {
        "/probe/3": "probe.item",
        "/no/such/page": None,  # the 404 page: no endpoint served it
        "/probe/search": "probe.search",
    }
    # Named after the response, for profiled requests only: no hook runs in every request.
    assert app.before_request_funcs == site(tmp_path / "plain").before_request_funcs


def test_a_500_profile_names_the_exception_flask_turned_into_it(tmp_path: Path) -> None:
    """In production Flask answers the exception itself (its 500 page): the middleware sees a
    500, never the exception, and the viewer's Error line used to say "—"."""
    app = site(tmp_path, PROFILER_SECRET=SECRET)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as deployed: TESTING propagates them

    @app.get("/probe/fails")
    def fails() -> str:
        raise RuntimeError("the reason the on-call engineer is looking")

    result = run(app, "/probe/fails", headers={"X-Profile-Token": make_token(SECRET, 60)})

    assert result.status.startswith("500")
    [meta] = stored(tmp_path / "profiles")
    assert meta["status"] == 500
    assert meta["error"] == "RuntimeError: the reason the on-call engineer is looking"


def test_the_engine_and_sampling_settings_reach_the_middleware(tmp_path: Path) -> None:
    app = site(
        tmp_path, PROFILER_SAMPLE_RATE=1.0, PROFILER_ENGINE="cprofile", PROFILER_MAX_PROFILES=1
    )

    run(app, "/health")
    run(app, "/health")

    [meta] = stored(tmp_path / "profiles")
    assert (meta["profiler"], meta["trigger"]) == ("cprofile", "sample")


def test_the_token_command_prints_a_token_for_the_ttl(tmp_path: Path) -> None:
    app = site(tmp_path, PROFILER_SECRET=SECRET)

    result = app.test_cli_runner().invoke(args=["profiler-token", "--ttl", "15m"])

    assert result.exit_code == 0
    assert TokenVerifier(SECRET).expires_at(result.output.strip()) == pytest.approx(
        time.time() + 900, abs=2
    )


def test_the_token_command_defaults_to_an_hour_or_the_ceiling(tmp_path: Path) -> None:
    for ceiling, expected in (("1d", 3600), ("10m", 600)):
        app = site(tmp_path, PROFILER_SECRET=SECRET, PROFILER_TOKEN_MAX_TTL=ceiling)

        result = app.test_cli_runner().invoke(args=["profiler-token"])

        expires = TokenVerifier(SECRET).expires_at(result.output.strip())
        assert expires == pytest.approx(time.time() + expected, abs=2), ceiling


def test_the_token_command_needs_a_secret(tmp_path: Path) -> None:
    result = site(tmp_path).test_cli_runner().invoke(args=["profiler-token"])

    assert result.exit_code == 1 and "PROFILER_SECRET is not set" in result.output


def test_a_secret_too_short_is_a_message_for_the_token_command_not_a_traceback(
    tmp_path: Path,
) -> None:
    """The on-call engineer's first step: minting a token with a mistyped secret."""
    env = {**os.environ, "PROFILER_SECRET": "short", "VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    result = run_flask("profiler-token", "--ttl", "15m", env=env, cwd=tmp_path)

    assert result.returncode != 0 and result.stdout == ""
    assert "PROFILER_SECRET" in result.stderr and "at least 32" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "ttl, message",
    [
        ("1w", "not a duration"),
        ("0.5s", "shorter than the shortest lifetime, 1 s"),
        ("0", "shorter than the shortest lifetime, 1 s"),
        ("25h", "longer than PROFILER_TOKEN_MAX_TTL (86400 s)"),
        ("99999999999999999999d", "longer than PROFILER_TOKEN_MAX_TTL (86400 s)"),
        ("9" * 400, "not a usable duration"),
    ],
)
def test_a_bad_lifetime_is_a_usage_error(tmp_path: Path, ttl: str, message: str) -> None:
    app = site(tmp_path, PROFILER_SECRET=SECRET)

    result = app.test_cli_runner().invoke(args=["profiler-token", "--ttl", ttl])

    assert result.exit_code == 2  # click's usage error: no traceback, the usage line
    assert "Invalid value for '--ttl'" in result.output and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_ceiling_is_a_setting(tmp_path: Path) -> None:
    app = site(tmp_path, PROFILER_SECRET=SECRET, PROFILER_TOKEN_MAX_TTL="2d")

    result = app.test_cli_runner().invoke(args=["profiler-token", "--ttl", "2d"])

    assert result.exit_code == 0
    assert app.wsgi_app.max_token_ttl == 2 * 86400  # the middleware accepts what it minted
    assert run(app, "/health", headers={"X-Profile-Token": result.output.strip()}).header(
        "X-Profile-Id"
    )


@pytest.mark.parametrize("value", ["Q", "x" * 31, "  " + "z" * 20 + "  "])
def test_a_weak_secret_stops_the_app_and_says_how_to_make_one(tmp_path: Path, value) -> None:
    with pytest.raises(SettingsError) as error:
        site(tmp_path, PROFILER_SECRET=value)

    message = str(error.value)
    assert message.startswith("PROFILER_SECRET: ") and "at least 32" in message
    assert "secrets.token_urlsafe(32)" in message
    assert value.strip() not in message  # never the secret itself


def test_profiler_store_puts_the_profiles_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    app = site(tmp_path, PROFILER_SECRET=SECRET, PROFILER_STORE=postgres_url)
    token = make_token(SECRET, 60)

    profile_id = run(app, "/health", headers={"X-Profile-Token": token}).header("X-Profile-Id")

    store = app.extensions["request_profiler"].store
    assert isinstance(store, PostgresStore)
    assert [meta["id"] for meta in store.recent()] == [profile_id]
    assert stored(tmp_path / "profiles") == []
    assert (
        socket.gethostname()
        in run(app, "/_profiler/", headers={"X-Profile-Token": token}).body.decode()
    )
    store.close()


@pytest.mark.parametrize(
    "url", ["mysql://podcast:s3cret-pw@db/podcast", "postgresql://podcast:s3cret-pw@db/x?nosuch=1"]
)
def test_a_profiler_store_that_is_not_postgresql_stops_start_up_without_echoing_it(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(SettingsError, match="PROFILER_STORE") as failure:
        site(tmp_path, PROFILER_SECRET=SECRET, PROFILER_STORE=url)

    assert "s3cret-pw" not in str(failure.value)
