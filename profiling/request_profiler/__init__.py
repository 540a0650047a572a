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

Options of :class:`ProfilerMiddleware` (all keyword-only):

``secret`` (str or bytes, default None)
    Signs and checks tokens; at least 32 bytes (a shorter one is a ValueError).
    Without it, on-demand profiling and the viewer are off.
``sample_rate`` (float, default 0)
    Fraction of all other requests to profile (0 to 1). Sampled responses get
    no profiling headers.
``slow_ms`` (float, default 0)
    Keep a sampled profile only if its request took at least this long, so
    sampling can run continuously at a known cost. Token profiles are always kept.
``profiler`` (``"pyinstrument"``, ``"cprofile"`` or a :class:`Profiler`, default ``"pyinstrument"``)
    The engine: pyinstrument samples (cheap, call tree and timeline page,
    speedscope download); cProfile counts every call (slower, ``.pstats`` for snakeviz).
``interval`` (float seconds, default 0.001)
    pyinstrument's sampling interval. Its hook on every call is set only once
    a request has run this long (a one-shot ``SIGALRM`` timer, on the main
    thread, while the application has control): a shorter request is stored
    with its duration and no samples, as pyinstrument would record it, at
    almost no cost. See :class:`PyinstrumentProfiler` (``timer_start``).
``store`` (a :class:`Store`) or ``directory`` (path)
    Where profiles are kept; ``directory`` makes a :class:`DirectoryStore`.
    Several app servers share one list with a :class:`PostgresStore`, whose
    calls are bounded by a timeout. Required when ``secret`` or ``sample_rate`` is set.
``max_profiles`` (int, default 200), ``max_bytes`` (int, default 100 MiB)
    Bounds of the ``directory`` store; the oldest profiles go first.
``max_pending`` (int, default 64)
    Profiles each process may hold for its writer thread; beyond, they are
    dropped and counted (``middleware.writer.dropped``), with a warning.
``viewer_prefix`` (str, default ``"/_profiler"``; None or "" for no viewer)
    Where the viewer answers, token holders only.
``token_ttl`` (float seconds, default an hour, or ``max_token_ttl`` if shorter)
    Lifetime of tokens minted by the middleware's ``make_token()``.
``max_token_ttl`` (float seconds, default 86400)
    The longest lifetime a token may have: one that expires further away than
    this is refused, however it was minted.
``secret_params`` (names, default ``DEFAULT_SECRET_PARAMS``)
    Query parameters redacted in stored metadata, besides ``_profile``.
``accel_redirect_key`` (str, default ``"REQUEST_PROFILER_ACCEL_REDIRECT"``; None: off)
    A front server that sends every request carrying a token to the
    application (past its static files and caches, since it cannot check a
    signature) sets this WSGI variable on them to a location of its own.
    When the token turns out invalid, a GET or HEAD is answered at once with
    ``X-Accel-Redirect`` to it, and the front server serves the request as it
    would have without the token: a bogus cookie costs a signature check, not
    a page render. Clients cannot set such a variable, only the server.
``clock`` (callable, default ``time.time``)
    The current Unix time, for checking token expiry.

A profiled request only stops the sampler and hands the profile over: a
writer thread per process builds its metadata, serialises it and saves it,
in batches, each batch one file of a ``directory`` store
(:mod:`request_profiler.writer`), and what is queued is stored
when the process exits (uWSGI: with ``enable-threads``). In a worker too
busy to give that thread a turn, the request that finds a full batch queued
stores it itself, after its response. The viewer waits for its own process's
queue, so a profile just taken is listed; code that reads the store right
after a request calls ``middleware.flush()`` first.

Stored metadata: method, path, redacted query string, status, duration, time
to ``start_response``, time, endpoint (set ``environ[ENDPOINT_KEY]``), host
name and process id, request headers (``Cookie``, ``Authorization``, ``Proxy-Authorization``
and ``X-Profile-Token`` redacted), error, and the SQL queries reported through
:func:`record_sql`. Besides those redacted by name, the token the request was
accepted with and every ``_profile=`` value are removed by value from all of
it (and from the profile's description and data), whatever header, parameter
or message carried them. A failing store (full disk, unwritable directory)
never fails a request; it is logged once on the ``request_profiler`` logger.

Importing this package does not import Flask or Werkzeug; itsdangerous is
imported only when a secret is configured, psycopg2 only when a
:class:`PostgresStore` is made.
"""

from .middleware import ENDPOINT_KEY, ProfilerMiddleware
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
