"""The WSGI middleware: decides which requests to profile and profiles them whole.

A profile starts before the application is called and ends in the response
iterable's ``close()``, so it covers the body's iteration too (templates
rendered while streaming, a generator's queries). The body is passed on chunk
by chunk, never buffered, except in the inline view, which replaces it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from .pages import element, page
from .profilers import BUILTIN_PROFILERS, Profiler, get_profiler
from .redact import DEFAULT_SECRET_PARAMS, Redactor, redact_query, request_headers
from .sql import SqlCapture, start_capture, stop_capture
from .store import DirectoryStore, Store, new_profile_id
from .tokens import DEFAULT_MAX_TTL, TokenVerifier, ValidToken, check_ttl, make_token
from .viewer import Viewer, WSGIApp, profile_page_headers
from .writer import ProfileWriter

logger = logging.getLogger("request_profiler")

#: The application may set this environ key to the name of the view that
#: served the request; the viewer groups by it. See the ``endpoint`` option.
ENDPOINT_KEY = "request_profiler.endpoint"
#: The application may set this environ key to the exception it answered itself
#: (a framework's 500 page): the middleware sees only the status then.
ERROR_KEY = "request_profiler.error"

#: The WSGI variable nginx sets (``uwsgi_param``) on the requests it sends to the
#: application only because they carry a token; see the ``accel_redirect_key`` option.
ACCEL_REDIRECT_KEY = "REQUEST_PROFILER_ACCEL_REDIRECT"
# nginx makes a redirected request a GET (HEAD stays HEAD): no other method keeps its meaning.
_REDIRECTABLE_METHODS = frozenset({"GET", "HEAD"})

_VIEW_PARAM = "_profile_view=inline"
_VIEW_HEADER_KEY = "HTTP_X_PROFILE_VIEW"

# One profile at a time in the whole process, however many middlewares: from
# Python 3.12 a second profiler raises "Another profiling tool is already
# active", and pyinstrument keeps one sampler per thread. Requests that find
# it taken are served unprofiled instead of waiting.
_one_profile_at_a_time = threading.Lock()
#: Profiles whose body was dropped without close() (a test client that never closes its
#: responses), each with what ends it. The next call through a middleware ends them, not the
#: body's __del__: the collector may run that in the middle of a context variable being set,
#: and ending a profile sets context variables too (the SQL capture's, pyinstrument's), which
#: corrupts CPython's context mapping there (the process crashed).
_abandoned: list[tuple[Callable[[_Recording], object], _Recording]] = []
#: The app's headers a token request's answer replaces (_Recording.wrap says why).
_REPLACED = frozenset({"cache-control", "referrer-policy"})
#: How long the end of a token request waits for its profile to be stored.
_REQUESTED_STORE_SECONDS = 1.0


class ProfilerMiddleware:
    """Profile the requests that carry a valid token, and a sample of the others.

    ``ProfilerMiddleware(app)`` alone passes every request straight through.
    How requests carry tokens, what is stored and what the viewer shows: the
    package documentation (``help(request_profiler)``).

    :param app: the WSGI application to wrap.
    :param secret: Signs and checks tokens; at least 32 bytes (a shorter one is a ValueError).
        Without it, on-demand profiling and the viewer are off. (str or bytes, default None)
    :param sample_rate: Fraction of all other requests to profile (0 to 1). Sampled responses
        get no profiling headers. (float, default 0)
    :param slow_ms: Keep a sampled profile only if its request took at least this long, so
        sampling can run continuously at a known cost. Token profiles are always kept. (float,
        default 0)
    :param profiler: The engine: pyinstrument samples (cheap, call tree and timeline page,
        speedscope download); cProfile counts every call (slower, ``.pstats`` for snakeviz).
        (``"pyinstrument"``, ``"cprofile"`` or a :class:`Profiler`, default ``"pyinstrument"``)
    :param interval: pyinstrument's sampling interval. Its hook on every call is set only once a
        request has run this long (a one-shot ``SIGALRM`` timer, on the main thread, while the
        application has control): a shorter request is stored with its duration and no samples, as
        pyinstrument would record it, at almost no cost. See :class:`PyinstrumentProfiler`
        (``timer_start``). (float seconds, default 0.001)
    :param store: where profiles are kept (a :class:`Store`). Several app servers share one list
        with a :class:`PostgresStore`, whose calls are bounded by a timeout. This or ``directory``
        is required when ``secret`` or ``sample_rate`` is set.
    :param directory: a directory for a :class:`DirectoryStore`, instead of ``store``.
    :param max_profiles: bound of the ``directory`` store (default 200); the oldest profiles go
        first.
    :param max_bytes: bound of the ``directory`` store in bytes (default 100 MiB).
    :param max_pending: Profiles each process may hold for its writer thread; beyond, they are
        dropped and counted (``middleware.writer.dropped``), with a warning. (int, default 64)
    :param viewer_prefix: Where the viewer answers, token holders only. (str, default
        ``"/_profiler"``; None or "" for no viewer)
    :param token_ttl: Lifetime of tokens minted by the middleware's ``make_token()``. (float
        seconds, default an hour, or ``max_token_ttl`` if shorter)
    :param max_token_ttl: The longest lifetime a token may have: one that expires further away
        than this is refused, however it was minted. (float seconds, default 86400)
    :param secret_params: Query parameters redacted in stored metadata, besides ``_profile``.
        (names, default ``DEFAULT_SECRET_PARAMS``)
    :param accel_redirect_key: A front server that sends every request carrying a token to the
        application (past its static files and caches, since it cannot check a signature) sets this
        WSGI variable on them to a location of its own. When the token turns out invalid, a GET or
        HEAD is answered at once with ``X-Accel-Redirect`` to it, and the front server serves the
        request as it would have without the token: a bogus cookie costs a signature check, not a
        page render. Clients cannot set such a variable, only the server. (str, default
        ``"REQUEST_PROFILER_ACCEL_REDIRECT"``; None: off)
    :param clock: The current Unix time, for checking token expiry. (callable, default
        ``time.time``)
    :param endpoint: Names the view that served a profiled request, which the viewer groups by:
        called with its environ once the application has answered, for profiled requests only,
        so that every other request pays nothing for it (a Flask ``before_request`` hook setting
        ``ENDPOINT_KEY`` costs each request several microseconds). Flask: match the request's
        environ against the app's URL map, as the site does (webapp/profiler.py). (callable
        returning a str or None; default None: ``environ[ENDPOINT_KEY]`` if the app set it)
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        secret: str | bytes | None = None,
        sample_rate: float = 0.0,
        slow_ms: float = 0.0,
        profiler: str | Profiler = "pyinstrument",
        interval: float = 0.001,
        store: Store | None = None,
        directory: str | os.PathLike[str] | None = None,
        max_profiles: int = 200,
        max_bytes: int = 100 * 2**20,
        max_pending: int = 64,
        viewer_prefix: str | None = "/_profiler",
        token_ttl: float | None = None,
        max_token_ttl: float = DEFAULT_MAX_TTL,
        secret_params: Collection[str] = DEFAULT_SECRET_PARAMS,
        accel_redirect_key: str | None = ACCEL_REDIRECT_KEY,
        clock: Callable[[], float] = time.time,
        endpoint: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise ValueError("sample_rate must be between 0 and 1")
        if store is None and directory is not None:
            store = DirectoryStore(directory, max_profiles=max_profiles, max_bytes=max_bytes)
        if store is None and (secret or sample_rate):
            raise ValueError(
                "profiling needs somewhere to keep profiles: pass store= or directory="
            )
        self.app = app
        self.sample_rate = sample_rate
        self.slow_ms = slow_ms
        self.profiler = get_profiler(profiler, interval)
        self.store = store
        self.max_token_ttl = max_token_ttl
        self.token_ttl = min(3600, max_token_ttl) if token_ttl is None else token_ttl
        check_ttl(self.token_ttl, max_token_ttl)
        #: Stores profiles off the request path; ``writer.dropped`` counts what a full queue lost.
        self.writer = None if store is None else ProfileWriter(store, max_pending=max_pending)
        self.secret_params = frozenset(name.lower() for name in secret_params)
        self.accel_redirect_key = accel_redirect_key
        self.endpoint = endpoint
        self._secret = secret
        self._tokens = TokenVerifier(secret, max_ttl=max_token_ttl, clock=clock) if secret else None
        self._viewer: Viewer | None = None
        if self._tokens is not None and store is not None and viewer_prefix:
            readers = {name: cls() for name, cls in BUILTIN_PROFILERS.items()}
            readers[self.profiler.name] = self.profiler
            self._viewer = Viewer(
                prefix=viewer_prefix,
                store=store,
                tokens=self._tokens,
                profilers=readers,
                fallback=app,
                clock=clock,
                # A profile requested a moment ago in this process is listed, not still queued.
                before_reading=lambda: self.flush(timeout=1.0),
            )
        self._failing: set[str] = set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the profiles this process handed over are stored; False on timeout."""
        return self.writer is None or self.writer.flush(timeout)

    def make_token(self, ttl_seconds: float | None = None) -> str:
        """A token for this middleware's secret, valid ``ttl_seconds`` (default ``token_ttl``)."""
        if not self._secret:
            raise ValueError("no secret is configured: on-demand profiling is off")
        ttl = self.token_ttl if ttl_seconds is None else ttl_seconds
        return make_token(self._secret, ttl, max_ttl=self.max_token_ttl)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        # The path every unprofiled request takes: keep it to a few lookups.
        if _abandoned:
            _finish_abandoned()
        if self._viewer is not None and self._viewer.handles(environ.get("PATH_INFO", "")):
            return self._viewer(environ, start_response)
        token = None if self._tokens is None else self._tokens.from_environ(environ)
        if token is None and self.accel_redirect_key:
            # Only the front server's token path sets it; a client cannot.
            target = environ.get(self.accel_redirect_key)
            if target and environ.get("REQUEST_METHOD") in _REDIRECTABLE_METHODS:
                return _accel_redirect(target, start_response)
        if token is not None or (self.sample_rate and random.random() < self.sample_rate):
            return self._profile(environ, start_response, token)
        return self.app(environ, start_response)

    def _profile(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        token: ValidToken | None,
    ) -> Iterable[bytes]:
        if not _one_profile_at_a_time.acquire(blocking=False):
            return self.app(environ, start_response)
        try:
            recording = _Recording(environ, token, self.profiler)
        except Exception:
            _one_profile_at_a_time.release()
            self._failed("starting the profiler")
            return self.app(environ, start_response)
        self._succeeded("starting the profiler")
        if recording.requested and _wants_inline(environ):
            return self._inline(recording, environ, start_response)
        try:
            app_iter = self.app(environ, recording.wrap(start_response))
        except BaseException as error:
            recording.failed(error)
            self._finish(recording)
            raise
        self.profiler.pause()
        return _ProfiledBody(app_iter, recording, self.profiler, self._finish)

    def _inline(
        self, recording: _Recording, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer with the profile's page; the response is run to its end inside the profile."""

        def discard_response(
            status: str, headers: list[Any], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            recording.response_started(status)
            return lambda data: None

        try:
            app_iter = self.app(environ, discard_response)
            try:
                for _ in app_iter:
                    pass
                recording.body_complete = True
            finally:
                if hasattr(app_iter, "close"):
                    app_iter.close()
        except BaseException as error:
            recording.failed(error)
            self._finish(recording)
            raise
        make_data = self._finish(recording)
        try:
            data = None if make_data is None else make_data()
        except Exception:
            data = None
            self._failed("converting the profile")
        if data is None:
            body = page(
                "No profile", element("p", "The profiler failed; see the server log.")
            ).encode()
        else:
            body = self.profiler.render_html(data).encode()
        headers = [
            *profile_page_headers(self.profiler),
            *recording.result_headers(),
            ("Content-Length", str(len(body))),
        ]
        start_response("200 OK", headers)
        return [body]

    def _finish(self, recording: _Recording) -> Callable[[], bytes] | None:
        """Stop the profiler and hand the profile to the writer if wanted; later calls do nothing.

        Returns what makes the profile's data, or None if there is none. Only the
        sampler's stop and the hand-off run here: the metadata, the data and the
        store's work are the writer's, on its own thread.
        """
        if recording.finished:
            return None
        recording.finished = True
        duration_ms = recording.elapsed_ms()
        try:
            make_data: Callable[[], bytes] | None = functools.cache(self.profiler.stop_deferred())
        except Exception:
            # E.g. pyinstrument refuses to stop on a thread other than the one
            # that started it, if a server ever called close() from another.
            make_data = None
            self._failed("stopping the profiler")
        else:
            self._succeeded("stopping the profiler")
        finally:
            stop_capture(recording.sql)
            _one_profile_at_a_time.release()
        # Token requests are kept whatever their speed; slow_ms makes
        # continuous sampling cheap to store by keeping only the slow ones.
        if make_data is not None and (recording.requested or duration_ms >= self.slow_ms):
            assert self.writer is not None, "__init__ requires a store whenever profiling can start"
            # The server may clear or reuse the environ once the response is closed (uWSGI does).
            environ = dict(recording.environ)
            if self.endpoint is not None:
                environ[ENDPOINT_KEY] = self._endpoint_of(environ)
            profiler_name, secret_params = self.profiler.name, self.secret_params

            def make_profile() -> tuple[dict[str, Any], bytes]:
                meta = recording.metadata(environ, duration_ms, profiler_name, secret_params)
                return meta, recording.redactor.data(make_data())

            self.writer.submit(recording.id, make_profile)
            if recording.requested:
                # The token holder was given its X-Profile-Id: the profile is in the store
                # when the request ends, for the viewer in any process to find (only this
                # one's could flush this writer). Rare requests, so no batching delay; a
                # stuck store delays their end by at most this, and fails none.
                self.writer.flush(timeout=_REQUESTED_STORE_SECONDS)
            else:
                self.writer.store_if_behind()
        return make_data

    def _endpoint_of(self, environ: dict[str, Any]) -> str | None:
        assert self.endpoint is not None
        try:
            name = self.endpoint(environ)
        except Exception:  # the profile is kept without it; the request is never failed
            self._failed("naming the endpoint")
            return None
        self._succeeded("naming the endpoint")
        return name if isinstance(name, str) else None

    def _failed(self, what: str) -> None:
        # Once per run of failures: a full disk must not flood the log with a
        # traceback per request.
        if what not in self._failing:
            self._failing.add(what)
            logger.warning(
                "request_profiler: %s failed; requests are still served. "
                "Further failures are not logged until it succeeds again.",
                what,
                exc_info=True,
            )

    def _succeeded(self, what: str) -> None:
        self._failing.discard(what)


def _accel_redirect(target: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Hand the request back to the front server, which serves ``target`` instead."""
    start_response("200 OK", [("X-Accel-Redirect", target), ("Content-Length", "0")])
    return []


def _wants_inline(environ: dict[str, Any]) -> bool:
    return environ.get(_VIEW_HEADER_KEY) == "inline" or _VIEW_PARAM in environ.get(
        "QUERY_STRING", ""
    ).split("&")


class _Recording:
    """What is known about one profiled request, from its start to its close()."""

    def __init__(
        self, environ: dict[str, Any], token: ValidToken | None, profiler: Profiler
    ) -> None:
        self.environ = environ
        self.requested = token is not None
        # Everything stored goes through it: the accepted token and any
        # _profile= value are removed wherever the request carried them.
        self.redactor = Redactor(None if token is None else token.token)
        self.id = new_profile_id()
        self.status: int | None = None
        self.response_ms: float | None = None
        self.error: str | None = None
        self.body_complete = False
        self.finished = False
        self._time = time.time()
        self._started = time.perf_counter()
        # The description names the request in pyinstrument's page: no query string.
        profiler.start(self.redactor.text(f"{environ.get('REQUEST_METHOD', '')} {_path(environ)}"))
        self.sql: SqlCapture = start_capture()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._started) * 1000

    def response_started(self, status: str) -> None:
        self.status = int(status.split(None, 1)[0])
        self.response_ms = self.elapsed_ms()

    def failed(self, error: BaseException) -> None:
        self.error = f"{type(error).__qualname__}: {error}"[:500]

    def result_headers(self) -> list[tuple[str, str]]:
        """The headers that tell a token holder where the profile is.

        Server-Timing can only cover the time until start_response(): headers
        leave before the body is iterated. The profile itself covers it all.
        """
        return [
            ("X-Profile-Id", self.id),
            ("Server-Timing", f"app;dur={self.response_ms or 0:.1f}"),
        ]

    def wrap(self, start_response: Callable[..., Any]) -> Callable[..., Any]:
        def profiled_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            self.response_started(status)
            # Sampled requests did not ask to be profiled, and their client
            # may not be trusted with timings: they look like any other.
            if self.requested:
                # The answer carries this token holder's profile id and timings: no cache (a
                # CDN, a proxy, the browser's) may keep it for anyone, nor reuse it for a later
                # request that should be profiled afresh. Its URL may hold the token
                # (?_profile=): what the page loads or links to gets no Referer to carry it on.
                headers = [
                    *(header for header in headers if header[0].lower() not in _REPLACED),
                    ("Cache-Control", "no-store"),
                    ("Referrer-Policy", "no-referrer"),
                    *self.result_headers(),
                ]
            return start_response(status, headers, exc_info)

        return profiled_start_response

    def metadata(
        self,
        environ: dict[str, Any],
        duration_ms: float,
        profiler_name: str,
        secret_params: Collection[str],
    ) -> dict[str, Any]:
        sql = self.sql
        meta = {
            "id": self.id,
            "time": self._time,
            "method": environ.get("REQUEST_METHOD", ""),
            "path": _path(environ),
            "query": redact_query(_text(environ.get("QUERY_STRING", "")), secret_params),
            "status": self.status,
            "duration_ms": round(duration_ms, 3),
            "response_ms": None if self.response_ms is None else round(self.response_ms, 3),
            "endpoint": environ.get(ENDPOINT_KEY),
            # Several app servers can share one store: the viewer says which one served it.
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "trigger": "token" if self.requested else "sample",
            "profiler": profiler_name,
            "error": self.error or _error_of(environ),
            "body_complete": self.body_complete,
            "sql_count": sql.count,
            "sql_ms": round(sql.seconds * 1000, 3),
            "sql": [[statement, round(seconds * 1000, 3)] for statement, seconds in sql.statements],
            "headers": request_headers(environ),
        }
        return self.redactor.scrub(meta)


class _ProfiledBody:
    """The application's response iterable, passed on chunk by chunk.

    ``close()`` closes the application's iterable, then ends the profile:
    servers call it when the body is sent, when sending failed and when the
    client went away, so every profile ends and is kept. A body dropped without
    it (a test client's) is ended by the middleware's next call.
    """

    def __init__(
        self,
        app_iter: Iterable[bytes],
        recording: _Recording,
        profiler: Profiler,
        finish: Callable[[_Recording], object],
    ) -> None:
        self._app_iter = app_iter
        self._chunks: Iterator[bytes] = iter(app_iter)
        self._recording = recording
        # A list's chunks are made already: the server has control while they are iterated.
        self._profiler = None if isinstance(app_iter, list | tuple) else profiler
        self._finish = finish

    def __iter__(self) -> _ProfiledBody:
        return self

    def __next__(self) -> bytes:
        # The application makes the chunk; the server writes it, unprofiled by a timer.
        if self._profiler is not None:
            self._profiler.resume()
        try:
            return next(self._chunks)
        except StopIteration:
            self._recording.body_complete = True
            raise
        except Exception as error:
            self._recording.failed(error)
            raise
        finally:
            if self._profiler is not None:
                self._profiler.pause()

    def close(self) -> None:
        try:
            if hasattr(self._app_iter, "close"):
                self._app_iter.close()
        finally:
            self._finish(self._recording)

    def __del__(self) -> None:
        # WSGI servers call close(), but a test client whose response is never
        # closed would otherwise keep the process lock: no profile would ever
        # run again in this process. Only handed over here (see _abandoned).
        if not self._recording.finished:
            _abandoned.append((self._finish, self._recording))


def _finish_abandoned() -> None:
    """End the profiles whose body was dropped unclosed (see ``_abandoned``)."""
    while True:
        try:
            finish, recording = _abandoned.pop()
        except IndexError:  # another thread ended the last one
            return
        finish(recording)


def _error_of(environ: dict[str, Any]) -> str | None:
    error = environ.get(ERROR_KEY)
    return error[:500] if isinstance(error, str) else None


def _text(wsgi_string: str) -> str:
    """A WSGI "bytes as latin-1" string decoded as the UTF-8 the client sent."""
    try:
        return wsgi_string.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it
        return wsgi_string


def _path(environ: dict[str, Any]) -> str:
    return _text(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
