"""Profiles in PostgreSQL: one list for every app server behind the same load balancer.

    store = PostgresStore("postgresql://podcast:secret@10.0.0.20:6432/podcast", max_profiles=200)
    ProfilerMiddleware(app, secret=SECRET, store=store)

Each process keeps one connection, opened on first use (never in a pre-fork
server's master) and replaced after any failure. Every call is one statement
list sent in one round trip, which PostgreSQL runs as one transaction: safe
behind PgBouncer's transaction pooling, where consecutive transactions may run
on different server sessions, and it sets nothing outside that transaction
(``SET LOCAL``).

psycopg2 is imported when a store is made, so the middleware and the
directory store never need it (the ``postgres`` extra: ``pip install './profiling[postgres]'``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from .store import StoreUnavailable, is_profile_id, is_requested, json_value

_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresStore:
    """Profiles in one PostgreSQL table shared by any number of processes and hosts.

    The same contract as :class:`~request_profiler.DirectoryStore`: a profile
    is saved whole or not at all (one transaction), the oldest go first when a
    bound is passed (requested ones last, see :func:`~request_profiler.store.is_requested`),
    and the profile just saved is never pruned by its own save.
    Saves are serialised by a table lock that readers do not wait for (``SHARE
    ROW EXCLUSIVE``), so many writers keep the table within its bounds.

    Nothing it does can hold a request for long: connecting, waiting for the
    lock and running a statement are each bounded by ``timeout``, and after a
    failure every call fails at once, without touching the network, for
    ``retry_after`` seconds. A connection that a call finds closed (the server
    restarted, PgBouncer or a firewall dropped it) is no such failure: the call
    is tried once more, on a new connection. Failures raise
    :class:`StoreUnavailable`, whose message never holds the URL.

    :param url: a libpq URL or key=value string. Use the application's role,
        through PgBouncer if the site has one; the table is created on first use,
        so the role needs CREATE on its schema the first time. A table made by an
        earlier version gets the ``requested`` column then too, which needs the
        table's owner; for one another role owns, that role runs once: ``ALTER
        TABLE request_profiles ADD COLUMN requested boolean NOT NULL DEFAULT false``.
    :param max_profiles: how many profiles are kept at most.
    :param max_bytes: how many bytes of profiles are kept at most, counted as
        :class:`DirectoryStore` counts its files: the metadata as JSON, a
        newline, the data.
    :param table: the table's name (created if missing).
    :param timeout: seconds for connecting (libpq rounds up to whole seconds,
        2 at least), waiting for the lock, and each statement.
    :param retry_after: seconds during which calls fail at once after a failure.
    """

    def __init__(
        self,
        url: str,
        *,
        max_profiles: int = 200,
        max_bytes: int = 100 * 2**20,
        table: str = "request_profiles",
        timeout: float = 2.0,
        retry_after: float = 10.0,
    ) -> None:
        if max_profiles < 1 or max_bytes < 1:
            raise ValueError("max_profiles and max_bytes must be positive")
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"not a plain lower-case table name: {table!r}")
        if timeout <= 0 or retry_after < 0:
            raise ValueError("timeout must be positive and retry_after not negative")
        try:
            import psycopg2
            from psycopg2.extensions import parse_dsn
        except ImportError:
            raise ImportError(
                "PostgresStore needs psycopg2: pip install psycopg2-binary "
                "(request-profiler's postgres extra)"
            ) from None
        try:
            parameters = parse_dsn(url)
        except psycopg2.ProgrammingError:
            # libpq's message may quote the string, password included.
            raise ValueError("the profile store's URL is not a valid PostgreSQL URL") from None
        milliseconds = max(1, round(timeout * 1000))
        parameters.setdefault("connect_timeout", str(max(2, math.ceil(timeout))))
        # A server that stops answering mid-statement (host gone, packets dropped) is given
        # up after this long instead of the kernel's ~15 minutes of retransmissions.
        parameters.setdefault("tcp_user_timeout", str(milliseconds))
        parameters.setdefault("application_name", "request_profiler")
        self._psycopg2 = psycopg2
        self._parameters = parameters
        self.max_profiles = max_profiles
        self.max_bytes = max_bytes
        self.table = table
        self.timeout = timeout
        self.retry_after = retry_after
        # Bounds every statement and lock wait; LOCAL: they end with the transaction.
        self._limits = (
            f"SET LOCAL statement_timeout = {milliseconds}; "
            f"SET LOCAL lock_timeout = {milliseconds}; "
        )
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = os.getpid()
        self._table_ready = False
        self._failed_at: float | None = None
        # Connections a forked child inherited: never used, never closed (closing one
        # would end the parent's session on the server).
        self._inherited: list[Any] = []

    def save(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        if not is_profile_id(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        meta_json = json.dumps(meta, separators=(",", ":"))
        size = len(meta_json.encode()) + 1 + len(data)
        table = self.table
        self._run(
            # One writer at a time, so each one's pruning sees the others' profiles;
            # SHARE ROW EXCLUSIVE lets readers (ACCESS SHARE) through.
            f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE; "
            f"INSERT INTO {table} (id, meta, data, bytes, requested) "
            "VALUES (%(id)s, %(meta)s, %(data)s, %(bytes)s, %(requested)s); "
            # Requested first, then newest first, a running count and size: everything from
            # the first profile past a bound on is deleted, except the one just saved.
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM ("
            "SELECT id, row_number() OVER kept AS position, sum(bytes) OVER kept AS total "
            f"FROM {table} WINDOW kept AS (ORDER BY requested DESC, id DESC)) AS ranked "
            "WHERE id <> %(id)s AND (position > %(max_profiles)s OR total > %(max_bytes)s))",
            {
                "id": profile_id,
                "meta": meta_json,
                "data": self._psycopg2.Binary(data),
                "bytes": size,
                # A column, not the metadata's trigger: ordering on meta->>'trigger' would
                # parse every row's JSON on every save.
                "requested": is_requested(meta),
                "max_profiles": self.max_profiles,
                "max_bytes": self.max_bytes,
            },
        )

    def recent(self) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT meta::text FROM {self.table} ORDER BY id DESC LIMIT %(limit)s",
            {"limit": self.max_profiles},
            fetch=True,
        )
        return [meta for (text,) in rows if (meta := _json_object(text)) is not None]

    def load(self, profile_id: str) -> tuple[dict[str, Any], bytes] | None:
        if not is_profile_id(profile_id):
            return None
        rows = self._run(
            f"SELECT meta::text, data FROM {self.table} WHERE id = %(id)s",
            {"id": profile_id},
            fetch=True,
        )
        if not rows:
            return None
        text, data = rows[0]
        meta = _json_object(text)
        return None if meta is None else (meta, bytes(data))

    def close(self) -> None:
        """Close this process's connection (the next call opens a new one)."""
        with self._lock:
            self._discard()

    def _run(self, statements: str, params: Mapping[str, Any], *, fetch: bool = False) -> Any:
        """Run ``statements`` (``;``-separated) as one transaction in one round trip."""
        with self._lock:
            if os.getpid() != self._pid:
                self._pid = os.getpid()
                if self._connection is not None:
                    self._inherited.append(self._connection)
                self._connection = None
            if self._failed_at is not None:
                waited = time.monotonic() - self._failed_at
                if waited < self.retry_after:
                    raise StoreUnavailable(
                        f"the profile store failed {waited:.1f} s ago; "
                        f"trying again {self.retry_after:g} s after the failure"
                    )
            for _ in range(2):
                reused = self._connection is not None
                try:
                    result = self._execute(statements, params, fetch=fetch)
                    break
                except self._psycopg2.Error as error:
                    # A connection open since an earlier call may have been closed meanwhile
                    # (the server restarted, PgBouncer or a firewall dropped it): that says
                    # nothing of the database now, so the call is tried once more on a new one.
                    # Anything else, or a new connection failing, is a failure.
                    stale = reused and bool(self._connection.closed)
                    self._discard()
                    if not stale:
                        self._failed_at = time.monotonic()
                        raise StoreUnavailable(
                            f"the profile store failed: {_first_line(error)}"
                        ) from None
            self._failed_at = None
            return result

    def _execute(self, statements: str, params: Mapping[str, Any], *, fetch: bool) -> Any:
        if self._connection is None:
            self._connection = self._psycopg2.connect(**self._parameters)
            # Each execute() below is then its own implicit transaction.
            self._connection.autocommit = True
        with self._connection.cursor() as cursor:
            if not self._table_ready:
                cursor.execute(self._limits + self._create_table())
                self._table_ready = True
            cursor.execute(self._limits + statements, params)
            return cursor.fetchall() if fetch else None

    def _create_table(self) -> str:
        table = self.table
        return (
            # Two processes creating the table at once would collide in the catalogue: the
            # first takes this transaction-scoped lock, the second then finds the table.
            f"SELECT pg_advisory_xact_lock({_lock_key(table)}); "
            f"CREATE TABLE IF NOT EXISTS {table} ("
            # new_profile_id(): UTC time to the microsecond, then random digits, so the
            # primary key's order is the age order that recent() walks (pruning: within each kind).
            "id text PRIMARY KEY, "
            "meta json NOT NULL, "
            "data bytea NOT NULL, "
            "bytes bigint NOT NULL); "
            # The column, in a new table or one made before requested profiles were kept
            # first. Looked up first: ALTER TABLE, even with IF NOT EXISTS, would wait for an
            # exclusive lock at every process's first call, and needs the table's owner.
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_attribute "
            f"WHERE attrelid = '{table}'::regclass AND attname = 'requested' AND NOT attisdropped"
            f") THEN ALTER TABLE {table} ADD COLUMN requested boolean NOT NULL DEFAULT false; "
            "END IF; END $$"
        )

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        self._table_ready = False
        if connection is not None:
            try:
                connection.close()
            except self._psycopg2.Error:
                pass


def _json_object(text: str) -> dict[str, Any] | None:
    """A row's metadata; None for a value the store never writes, which a hand-made row may hold
    (the column takes any JSON). Parsed here rather than by psycopg2, whose json.loads raised
    on JSON nested too deep for it, in fetchall(), failing every list."""
    try:
        meta = json_value(text)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _lock_key(table: str) -> int:
    """The same advisory lock number for a table name in every process, on every host."""
    digest = hashlib.sha256(f"request_profiler.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _first_line(error: BaseException) -> str:
    """What the server or libpq said (never a password): its first line."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
