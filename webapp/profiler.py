"""The site's per-request profiler: request_profiler, configured by the PROFILER_* settings.

    install_profiler(app)        # in create_app, after the settings are loaded

    $ flask --app webapp profiler-token --ttl 15m
    1767225600.q3Xo...    # send as X-Profile-Token or ?_profile=, or open /_profiler/?_profile=...

With no PROFILER_SECRET and PROFILER_SAMPLE_RATE 0 (the defaults) nothing is
wrapped: requests pay nothing at all. Profiles go to files in PROFILER_DIR, or with
PROFILER_STORE=postgresql://… to one PostgreSQL table that every app server shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Flask, current_app, got_request_exception, request
from flask.cli import with_appcontext
from request_profiler import (
    ERROR_KEY,
    DirectoryStore,
    PostgresStore,
    ProfilerMiddleware,
    Store,
    make_token,
    parse_ttl,
    record_sql,
    sql_capture_active,
)
from werkzeug.exceptions import HTTPException

from .db import get_database
from .db.backends import QueryHook
from .settings import SettingsError


def install_profiler(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` in the profiler and add the ``profiler-token`` command.

    The middleware is kept in ``app.extensions["request_profiler"]`` (None when off).
    """
    config = app.config
    middleware = None
    if config["PROFILER_SECRET"] or config["PROFILER_SAMPLE_RATE"]:
        middleware = ProfilerMiddleware(
            app.wsgi_app,
            secret=config["PROFILER_SECRET"] or None,
            sample_rate=config["PROFILER_SAMPLE_RATE"],
            slow_ms=config["PROFILER_SLOW_MS"],
            profiler=config["PROFILER_ENGINE"],
            store=open_profile_store(config),
            max_token_ttl=config["PROFILER_TOKEN_MAX_TTL"],
            endpoint=endpoint_finder(app),
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        # The data layer knows nothing of the profiler: the profiler asks to see its queries.
        get_database(app).query_hook = QueryHook(active=sql_capture_active, record=record_sql)
        # Flask answers a view's exception with its 500 page: the middleware would see the
        # status only. The signal fires on that path alone, so other requests pay nothing.
        got_request_exception.connect(note_error_for_profile, app)
    app.extensions["request_profiler"] = middleware
    app.cli.add_command(profiler_token_command)


def note_error_for_profile(sender: Flask, exception: BaseException, **extra: Any) -> None:
    """Names the exception behind a 500 in its profile's Error line (``ERROR_KEY``)."""
    request.environ[ERROR_KEY] = f"{type(exception).__qualname__}: {exception}"


def open_profile_store(config: Mapping[str, Any]) -> Store:
    """PROFILER_STORE's PostgreSQL database if it is set, else the directory PROFILER_DIR."""
    bounds = {
        "max_profiles": config["PROFILER_MAX_PROFILES"],
        "max_bytes": config["PROFILER_MAX_BYTES"],
    }
    url = config["PROFILER_STORE"]
    if not url:
        return DirectoryStore(config["PROFILER_DIR"], **bounds)
    # No message quotes the URL: it holds a password.
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # urlsplit's message may quote the host part, password and all
        raise SettingsError("PROFILER_STORE: not a valid URL") from None
    if scheme not in ("postgresql", "postgres"):
        raise SettingsError("PROFILER_STORE: expected a postgresql:// URL, or nothing")
    try:
        return PostgresStore(url, **bounds)
    except ValueError as error:
        raise SettingsError(f"PROFILER_STORE: {error}") from None


def endpoint_finder(app: Flask) -> Callable[[dict[str, Any]], str | None]:
    """The endpoint a request's environ routes to in ``app``: the viewer groups profiles by it
    (a CORS preflight or a 400 for an undecodable query string counts under the route its URL
    matches). The middleware asks after the response, for profiled requests only; a
    before_request hook recording it would cost every request several microseconds."""

    def endpoint(environ: dict[str, Any]) -> str | None:
        request = app.request_class(environ, populate_request=False, shallow=True)
        try:
            return app.create_url_adapter(request).match()[0]  # type: ignore[union-attr]
        except HTTPException:  # not found, method not allowed, or a redirect to the canonical URL
            return None

    return endpoint


def _ttl_seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_ttl(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.command("profiler-token")
@click.option(
    "--ttl",
    callback=_ttl_seconds,
    help="How long the token works: 90s, 15m, 1h, 2d; at least 1s, at most "
    "PROFILER_TOKEN_MAX_TTL (default 1d).  [default: 1h, or the maximum if shorter]",
)
@click.pass_context
@with_appcontext
def profiler_token_command(ctx: click.Context, ttl: int | None) -> None:
    """Print a token that switches profiling on for the requests that carry it."""
    config = current_app.config
    if not config["PROFILER_SECRET"]:
        raise click.ClickException("PROFILER_SECRET is not set, so on-demand profiling is off")
    ceiling = config["PROFILER_TOKEN_MAX_TTL"]
    if ttl is None:
        ttl = min(3600, ceiling)
    elif ttl > ceiling:
        raise click.BadParameter(
            f"{ttl} s is longer than PROFILER_TOKEN_MAX_TTL ({ceiling} s)",
            ctx=ctx,
            param_hint="'--ttl'",
        )
    click.echo(make_token(config["PROFILER_SECRET"], ttl, max_ttl=ceiling))
