"""PostgresStore: one list for several app servers, and a database that is down or slow costs
a request no more than the store's timeout.

The store's contract (bounds, order, atomicity, many writers) is in test_store_contract.py;
here are what only a store on a network service has: failures, timeouts, the back-off after a
failure, forks, and the viewer of one host listing every host's profiles.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest
from request_profiler import PostgresStore, ProfilerMiddleware, StoreUnavailable
from request_profiler.store import new_profile_id
from werkzeug.test import Client

from .helpers import SECRET, hello_app, run

#: Seconds the stores under test may spend on any one call.
TIMEOUT = 0.5
#: libpq waits whole seconds for a connection, 2 at least.
CONNECT_TIMEOUT = 2.0
PROFILE_LINK = re.compile(r'href="/_profiler/(\d{8}T\d{12}-[0-9a-f]{12})"')
#: What a bounded call may take beyond its timeout on a busy 2-core machine.
SLACK = 1.5


class SilentServer:
    """A TCP server that accepts connections and never says a word: a hung database host."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(connection)

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save(store: PostgresStore, **meta: object) -> str:
    profile_id = new_profile_id()
    store.save(profile_id, {"id": profile_id, **meta}, b"data")
    return profile_id


def timed(call, *args):
    started = time.monotonic()
    try:
        call(*args)
    except StoreUnavailable as error:
        return time.monotonic() - started, error
    return time.monotonic() - started, None


# --- Failures are bounded, and never name the URL ------------------------------------


def test_a_database_that_refuses_fails_at_once_and_the_message_has_no_password() -> None:
    store = PostgresStore(f"postgresql://podcast:s3cret-pw@127.0.0.1:{closed_port()}/db")

    with pytest.raises(StoreUnavailable) as failure:
        save(store)

    assert "s3cret-pw" not in str(failure.value)
    assert "refused" in str(failure.value)


def test_a_host_that_never_answers_costs_the_connect_timeout(silent_server: SilentServer) -> None:
    store = PostgresStore(
        f"postgresql://podcast:pw@127.0.0.1:{silent_server.port}/db", timeout=TIMEOUT
    )

    elapsed, error = timed(save, store)

    assert isinstance(error, StoreUnavailable)
    assert elapsed < CONNECT_TIMEOUT + SLACK
    assert len(silent_server.accepted) == 1


def test_after_a_failure_calls_fail_at_once_without_touching_the_network(
    silent_server: SilentServer,
) -> None:
    store = PostgresStore(
        f"postgresql://podcast:pw@127.0.0.1:{silent_server.port}/db",
        timeout=TIMEOUT,
        retry_after=60,
    )
    with pytest.raises(StoreUnavailable):
        save(store)

    for call in (lambda: save(store), store.recent, lambda: store.load(new_profile_id())):
        with pytest.raises(StoreUnavailable, match="trying again"):
            call()
    assert len(silent_server.accepted) == 1


def test_a_table_locked_by_someone_else_costs_the_lock_timeout(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, timeout=TIMEOUT, retry_after=0)
    save(store)  # creates the table
    blocker = psycopg2.connect(postgres_url)
    try:
        with blocker.cursor() as cursor:
            cursor.execute("LOCK TABLE request_profiles IN ACCESS EXCLUSIVE MODE")
        for call in (lambda: save(store), store.recent):
            elapsed, error = timed(call)
            # lock_timeout and statement_timeout are both TIMEOUT: either may end the wait.
            assert isinstance(error, StoreUnavailable) and "timeout" in str(error)
            assert elapsed < TIMEOUT + SLACK
    finally:
        blocker.rollback()
        blocker.close()
    # The lock gone, the next call connects again and works.
    save(store)
    assert len(store.recent()) == 2
    store.close()


def test_a_connection_the_server_closed_is_replaced_and_the_profile_kept(postgres_url: str) -> None:
    """A restart of PostgreSQL or PgBouncer closes every store's connection unseen. The next
    save failed on it and was lost, and so was every call in the retry_after after it, with the
    database up all along."""
    store = PostgresStore(postgres_url, timeout=TIMEOUT, retry_after=60)
    save(store, path="/before")
    backend = store._connection.get_backend_pid()
    with psycopg2.connect(postgres_url) as admin, admin.cursor() as cursor:
        # What a restart does to the store's session, and to no one else's.
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", (backend,))
        assert cursor.fetchone() == (True,)
    admin.close()

    save(store, path="/after")

    assert [meta["path"] for meta in store.recent()] == ["/after", "/before"]
    assert store._connection.get_backend_pid() != backend
    store.close()


def test_a_table_made_before_requested_profiles_were_kept_first_is_upgraded(
    postgres_url: str,
) -> None:
    connection = psycopg2.connect(postgres_url)
    with connection, connection.cursor() as cursor:  # the table as the store made it before
        cursor.execute(
            "CREATE TABLE request_profiles (id text PRIMARY KEY, meta json NOT NULL, "
            "data bytea NOT NULL, bytes bigint NOT NULL)"
        )
        old = new_profile_id(1000.0)
        cursor.execute(
            "INSERT INTO request_profiles VALUES (%s, %s, %s, 3)",
            (old, '{"trigger":"token"}', b"x"),
        )
    connection.close()
    store = PostgresStore(postgres_url, max_profiles=2, timeout=TIMEOUT)
    asked = new_profile_id(2000.0)
    store.save(asked, {"id": asked, "trigger": "token"}, b"data")
    sampled = new_profile_id(3000.0)
    store.save(sampled, {"id": sampled, "trigger": "sample"}, b"data")

    # The old row counts as not requested: the one saved since as requested outlives it.
    assert [meta.get("id") for meta in store.recent()] == [sampled, asked]
    store.close()


def test_a_first_call_waits_for_no_reader_and_needs_no_ownership(postgres_url: str) -> None:
    """A process's first call makes sure of the table and its columns. Altering it there would
    wait for every open reader (and fail with the timeout) and need the table's owner."""
    PostgresStore(postgres_url, timeout=TIMEOUT).recent()  # the table, as a first process made it
    reader = psycopg2.connect(postgres_url)
    store = PostgresStore(postgres_url, timeout=TIMEOUT)
    try:
        with reader.cursor() as cursor:  # a transaction left open holds its ACCESS SHARE lock
            cursor.execute("SELECT count(*) FROM request_profiles")
        saved = save(store, trigger="token")
        assert [meta["id"] for meta in store.recent()] == [saved]
    finally:
        store.close()
        reader.close()  # else dropping the test's schema would wait for it


def test_invalid_urls_and_table_names_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError) as failure:
        # libpq's own message would quote it: missing "=" after "mysql://u:s3cret-pw@h/db"
        PostgresStore("mysql://u:s3cret-pw@h/db")
    assert "s3cret-pw" not in str(failure.value)
    with pytest.raises(ValueError):
        PostgresStore("postgresql:///db", table="profiles; DROP TABLE episodes")


# --- Forks ------------------------------------------------------------------------


def test_a_forked_child_never_uses_or_closes_its_parents_connection(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    save(store, path="/parent-before")
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            save(store, path="/child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    # Closing the inherited connection would have ended the parent's server session.
    save(store, path="/parent-after")
    assert [meta["path"] for meta in store.recent()] == [
        "/parent-after",
        "/child",
        "/parent-before",
    ]
    store.close()


# --- Through the middleware: requests are never held or failed by the store -----------


def test_a_hung_store_costs_a_profiled_request_one_bounded_timeout_then_nothing(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(
        f"postgresql://podcast:pw@127.0.0.1:{silent_server.port}/db",
        timeout=TIMEOUT,
        retry_after=60,
    )
    middleware = ProfilerMiddleware(hello_app, secret=SECRET, store=store)
    token = middleware.make_token(60)
    with caplog.at_level(logging.WARNING, logger="request_profiler"):
        timings = []
        for _ in range(3):
            started = time.monotonic()
            result = run(middleware, "/page", headers={"X-Profile-Token": token})
            timings.append(time.monotonic() - started)
            assert (result.status, result.body) == ("200 OK", b"hello /page")

    assert timings[0] < CONNECT_TIMEOUT + SLACK
    # The next ones do not try again within retry_after: not one more connection.
    assert len(silent_server.accepted) == 1
    assert caplog.text.count("storing a profile failed") == 1


def test_every_host_lists_every_hosts_profiles(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two app servers, each its own middleware and store, one table: either viewer lists both."""
    hosts = {}
    for name in ("app-1", "app-2"):
        hosts[name] = ProfilerMiddleware(
            hello_app, secret=SECRET, store=PostgresStore(postgres_url)
        )
        monkeypatch.setattr(socket, "gethostname", lambda name=name: name)
        run(
            hosts[name], f"/served-by-{name}", headers={"X-Profile-Token": hosts[name].make_token()}
        )
    monkeypatch.undo()

    for middleware in hosts.values():
        page = Client(middleware).get(
            "/_profiler/", headers={"X-Profile-Token": middleware.make_token()}
        )
        assert page.status_code == 200
        assert ">Host</th>" in page.text
        for name in hosts:
            assert f"<td>{name}</td>" in page.text and f"/served-by-{name}" in page.text
        for profile_id, name in zip(
            PROFILE_LINK.findall(page.text), ["app-2", "app-1"], strict=True
        ):
            detail = Client(middleware).get(
                f"/_profiler/{profile_id}", headers={"X-Profile-Token": middleware.make_token()}
            )
            assert f"<td>Host</td><td>{name}</td>" in detail.text
    for middleware in hosts.values():
        middleware.store.close()  # type: ignore[union-attr]


def test_the_viewer_answers_503_while_the_store_is_down() -> None:
    url = f"postgresql://podcast:s3cret-pw@127.0.0.1:{closed_port()}/db"
    middleware = ProfilerMiddleware(hello_app, secret=SECRET, store=PostgresStore(url))

    page = Client(middleware).get(
        "/_profiler/", headers={"X-Profile-Token": middleware.make_token()}
    )

    assert page.status_code == 503 and page.headers["Retry-After"]
    assert "unavailable" in page.text and "s3cret-pw" not in page.text


#: Values of the json column that the middleware never writes: PostgreSQL takes them all.
FOREIGN_ROWS = [
    "{}",
    "[]",
    '"x"',
    "null",
    '{"duration_ms": "x"}',
    '{"duration_ms": 1e400}',
    # psycopg2's json.loads raised RecursionError in fetchall(): a 500 on every list.
    "[" * 5000 + "]" * 5000,
]


def test_rows_the_middleware_never_wrote_are_damaged_profiles(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    middleware = ProfilerMiddleware(hello_app, secret=SECRET, store=store)
    headers = {"X-Profile-Token": middleware.make_token()}
    kept = run(middleware, "/kept", headers=headers).header("X-Profile-Id")
    foreign = [new_profile_id() for _ in FOREIGN_ROWS]
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        for profile_id, meta in zip(foreign, FOREIGN_ROWS, strict=True):
            cursor.execute(
                "INSERT INTO request_profiles (id, meta, data, bytes) VALUES (%s, %s, 'x', 1)",
                (profile_id, meta),
            )
    connection.close()
    viewer = Client(middleware)

    for listing in ("/_profiler/", "/_profiler/?sort=duration", "/_profiler/endpoints"):
        page = viewer.get(listing, headers=headers)
        assert page.status_code == 200, listing
    assert PROFILE_LINK.findall(viewer.get("/_profiler/", headers=headers).text) == [kept]
    for profile_id in foreign:
        for page in ("", "/profile.html", "/download/session"):
            assert viewer.get(f"/_profiler/{profile_id}{page}", headers=headers).status_code == 404
    store.close()
