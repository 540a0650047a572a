"""Per-request profiling for any WSGI application, safe to leave on in production.

Wrap the application; requests are profiled only when they carry a valid
token, or when sampling picks them::

    from request_profiler import ProfilerMiddleware

    app.wsgi_app = ProfilerMiddleware(
        app.wsgi_app,
        secret=os.environ["PROFILER_SECRET"],
        directory="/var/lib/site/profiles",
    )

Mint a token with the same secret (``make_token(secret, ttl_seconds)`` or the
middleware's ``make_token()``), then send it with a request in the
``X-Profile-Token`` header, the ``_profile`` query parameter or the
``_profile`` cookie::

    curl -H "X-Profile-Token: $TOKEN" -D - https://example.org/episodes
    # X-Profile-Id: 20250101T120000123456-3f2a9c1b2d4e
    # Server-Timing: app;dur=12.3

The profiled answer is otherwise the app's, but for ``Cache-Control: no-store``:
it carries the token holder's profile id and timings, for no cache to keep.

A token in the query string ends up in access logs (nginx, uWSGI): prefer the
header or the cookie, and short lifetimes.

Add ``_profile_view=inline`` to the query (or send ``X-Profile-View: inline``)
to get the profile's page instead of the response. Open
``/_profiler/?_profile=$TOKEN`` for the stored profiles, and press its button
to keep profiling the pages you browse (a ``_profile`` cookie).

A request with no token, or an invalid, expired, forged, oversized or repeated
one, is served exactly as without the middleware (or, if the front server
asks for it, handed back to that server: ``accel_redirect_key``). A request
that arrives while another is profiled is served unprofiled: one profile runs
at a time per process. The profile covers the application call and the iteration of the
response body, streamed chunk by chunk; it ends in the body's ``close()``.
``Server-Timing`` covers only the time until ``start_response()``, as headers
are sent before the body.

The options are documented on :class:`ProfilerMiddleware` (``help(ProfilerMiddleware)``).

A profiled request only stops the sampler and hands the profile over: a
writer thread per process builds its metadata, serialises it and saves it,
in batches, each batch one file of a ``directory`` store
(:mod:`request_profiler.writer`), and what is queued is stored
when the process exits (uWSGI: with ``enable-threads``). In a worker too
busy to give that thread a turn, the request that finds a full batch queued
stores it itself, after its response. A token request ends (its ``close()``)
only once its profile is stored, for up to a second, so the viewer in any
process finds the ``X-Profile-Id`` it was given; sampled profiles are
batched, and code that reads the store right after a sampled request calls
``middleware.flush()`` first.

Stored metadata: method, path, redacted query string, status, duration, time
to ``start_response``, time, endpoint (the ``endpoint`` option, or ``environ[ENDPOINT_KEY]``), host
name and process id, request headers (``Cookie``, ``Authorization``, ``Proxy-Authorization``
and ``X-Profile-Token`` redacted), error (one the application raised, or
``environ[ERROR_KEY]``: what it answered itself), and the SQL queries reported through
:func:`record_sql`. Besides those redacted by name, the token the request was
accepted with and every ``_profile=`` value are removed by value from all of
it (and from the profile's description and data), whatever header, parameter
or message carried them. A failing store (full disk, unwritable directory)
never fails a request; it is logged once on the ``request_profiler`` logger.

Importing this package does not import Flask or Werkzeug; itsdangerous is
imported only when a secret is configured, psycopg2 only when a
:class:`PostgresStore` is made.
"""

from .middleware import ENDPOINT_KEY, ERROR_KEY, ProfilerMiddleware
from .postgres_store import PostgresStore
from .profilers import CProfileProfiler, ExportFormat, Profiler, PyinstrumentProfiler
from .redact import DEFAULT_SECRET_PARAMS
from .sql import record_sql, sql_capture_active
from .store import DirectoryStore, Store, StoreUnavailable
from .tokens import (
    TokenVerifier,
    WeakSecretError,
    check_secret,
    check_ttl,
    make_token,
    parse_ttl,
)

__all__ = [
    "DEFAULT_SECRET_PARAMS",
    "ENDPOINT_KEY",
    "ERROR_KEY",
    "CProfileProfiler",
    "DirectoryStore",
    "PostgresStore",
    "ExportFormat",
    "Profiler",
    "ProfilerMiddleware",
    "PyinstrumentProfiler",
    "Store",
    "StoreUnavailable",
    "TokenVerifier",
    "WeakSecretError",
    "check_secret",
    "check_ttl",
    "make_token",
    "parse_ttl",
    "record_sql",
    "sql_capture_active",
]
