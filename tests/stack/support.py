"""Helpers for the stack tests: plain HTTP(S) requests, a bounded background load, a private
PostgreSQL.

    status, headers, body = get(stack.settings.url + "/health")
    with BackgroundLoad(url, lambda i: "/health", threads=4) as load:
        ...                              # break something
    load.result.failures                 # every request that did not get a 2xx/3xx/404

The load generator is threads of keep-alive ``http.client`` connections on
loopback. It always stops by itself: after ``max_seconds`` or ``max_requests``,
whichever comes first, even if the test forgets to.

Like browsers, curl and urllib3, a client retries a GET once on a new connection
when a *reused* keep-alive connection turns out to be closed before any byte of a
response arrived (RFC 9112 section 9.3.1 allows it for idempotent requests): that
is a server closing an idle connection (nginx does it to every idle client on a
reload), not a lost request. Such retries are counted in ``result.retried``;
anything else that goes wrong is a failure.
"""

from __future__ import annotations

import collections
import glob
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def uwsgi_alone_environment(run_dir: Path, port: int) -> dict[str, str]:
    """deploy/uwsgi/uwsgi.ini's ``UWSGI_*`` variables for one process of a uWSGI started by hand:
    its files in ``run_dir`` and HTTP on ``port``, as the stack would give it."""
    return {
        "UWSGI_PROCESSES": "1",
        "UWSGI_SOCKET": str(run_dir / "uwsgi.sock"),
        "UWSGI_HTTP_SOCKET": f"127.0.0.1:{port}",
        "UWSGI_MASTER_FIFO": str(run_dir / "uwsgi.fifo"),
        "UWSGI_SAFE_PIDFILE": str(run_dir / "uwsgi.pid"),
        "UWSGI_STATS": str(run_dir / "uwsgi-stats.sock"),
    }


def _connection(
    url: str, timeout: float, context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context
        )
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def get(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 15.0,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, Message, bytes]:
    """One request, redirects not followed: (status, headers, body as sent, e.g. still gzipped)."""
    parts = urlsplit(url)
    connection = _connection(url, timeout, context)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target or "/", body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def raw_request(
    host: str, port: int, data: bytes, *, timeout: float = 15.0
) -> tuple[int, Message, bytes]:
    """``data`` sent as it is, which no client library would write: (status, headers, body)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.sendall(data)
        response = http.client.HTTPResponse(raw)
        response.begin()
        return response.status, response.headers, response.read()


def timed_requests(
    base_url: str, path: str, headers: Mapping[str, str], *, count: int, timeout: float = 15.0
) -> float:
    """Seconds ``count`` GETs of ``path`` take one after another on one keep-alive connection.

    Every answer must be a 200, read whole; the connection is opened (and a
    first request made) before the clock starts.
    """
    connection = _connection(base_url, timeout, None)
    try:

        def one() -> None:
            connection.request("GET", path, headers=dict(headers))
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise AssertionError(f"{path}: {response.status}")

        one()
        started = time.perf_counter()
        for _ in range(count):
            one()
        return time.perf_counter() - started
    finally:
        connection.close()


@dataclass
class LoadResult:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    #: (seconds since start, path, status or exception name) of every failed request.
    failures: list[tuple[float, str, object]] = field(default_factory=list)
    #: Requests sent again because their reused keep-alive connection had been closed
    #: (see the module docstring).
    retried: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    def summary(self) -> str:
        return (
            f"{self.total} requests in {self.seconds:.1f} s; statuses {dict(self.statuses)}; "
            f"errors {dict(self.errors)}; retried on a new connection {self.retried}; "
            f"first failures {self.failures[:5]}"
        )


class BackgroundLoad:
    """Requests from ``threads`` keep-alive clients until stopped, ``max_seconds`` pass or
    ``max_requests`` are made.

    ``path_for(i)`` gives the path of the i-th request. A request fails when it raises (connection
    refused or reset, timeout) or its status is not in ``ok_statuses``.
    """

    def __init__(
        self,
        base_url: str,
        path_for: Callable[[int], str],
        *,
        threads: int = 4,
        max_seconds: float = 60.0,
        max_requests: int = 50_000,
        ok_statuses: frozenset[int] = frozenset({200, 301, 304, 404}),
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self.path_for = path_for
        self.threads = threads
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.ok_statuses = ok_statuses
        self.timeout = timeout
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def __enter__(self) -> BackgroundLoad:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> LoadResult:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def elapsed(self) -> float:
        """Seconds since the load started: the clock of ``result.failures``."""
        return time.monotonic() - self._started

    def wait_requests(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` more requests have completed (or ``timeout``)."""
        target = self.result.total + count
        deadline = time.monotonic() + timeout
        while (
            self.result.total < target and time.monotonic() < deadline and not self._stop.is_set()
        ):
            time.sleep(0.01)

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._counter >= self.max_requests:
                return None
            if time.monotonic() - self._started > self.max_seconds:
                self._stop.set()
                return None
            self._counter += 1
            return self._counter

    def _record(self, path: str, outcome: object) -> None:
        with self._lock:
            if isinstance(outcome, int):
                self.result.statuses[outcome] += 1
                if outcome in self.ok_statuses:
                    return
            else:
                self.result.errors[outcome] += 1
            self.result.failures.append((round(time.monotonic() - self._started, 3), path, outcome))

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while (number := self._next()) is not None:
            path = self.path_for(number)
            outcome: object = None
            for attempt in range(2):
                reused = connection is not None
                try:
                    if connection is None:
                        connection = _connection(self.base_url, self.timeout, None)
                    connection.request("GET", path, headers={"Accept-Encoding": "gzip"})
                    response = connection.getresponse()
                    response.read()
                    outcome = response.status
                    if response.will_close:
                        connection.close()
                        connection = None
                    break
                except (OSError, http.client.HTTPException) as error:
                    outcome = type(error).__name__
                    if connection is not None:
                        connection.close()
                    connection = None
                    closed_before_response = isinstance(
                        error,
                        (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError),
                    )
                    if not (reused and closed_before_response and attempt == 0):
                        break
                    with self._lock:
                        self.result.retried += 1
            self._record(path, outcome)
        if connection is not None:
            connection.close()


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Poll ``condition`` until it returns something true; its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------
# A private PostgreSQL server
# --------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The directory of initdb / pg_ctl (not on PATH on Debian), newest version first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, for tests that stop and start the server.

    As root it runs as the ``postgres`` user (initdb refuses root), in a directory under /tmp
    owned by that user (pytest's own tmp dirs are 0700 root). ``prefix`` runs its commands,
    and so the server, through another command (``ip netns exec NAME``); ``settings`` are
    server settings (``{"max_connections": "6"}``).
    """

    def __init__(
        self,
        bindir: Path,
        *,
        prefix: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir = bindir
        self.prefix = list(prefix)
        self.settings = dict(settings or {})
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="podcast-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/podcast"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        user = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return subprocess.run(
            self.prefix + user + list(command),
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def psql(self, sql: str, database: str = "podcast") -> str:
        """Run ``sql`` as the superuser over the server's unix socket; its output, unaligned."""
        command = ["-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", database]
        return self._run(
            str(self.bindir / "psql"), *command, "-AtqX", "-v", "ON_ERROR_STOP=1", "-c", sql
        ).stdout

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()
        self.psql("CREATE DATABASE podcast", database="postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            "30",
            "stop",
            check=False,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
