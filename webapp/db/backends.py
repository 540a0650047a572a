"""One data layer over two real backends: embedded SQLite and PostgreSQL.

``DATABASE_URL`` picks the backend::

    db = open_database("sqlite:////srv/podcast/var/podcast.sqlite3")
    db = open_database("postgresql://podcast:secret@127.0.0.1/podcast")
    with db.session() as session:
        rows = session.fetch_all("SELECT number, title FROM episodes WHERE number > %s", (10,))

SQL is written once, with ``%s`` placeholders (psycopg2's style); the SQLite
backend rewrites them to ``?``. Rows come back as dicts.

Connections are opened lazily in each process and never cross a fork: uWSGI
loads the app in its master and forks workers from it, and a connection
inherited by two processes corrupts both. Any failure to reach the database
becomes :class:`DatabaseUnavailable`, which the web app answers with a 503.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import psycopg2
import psycopg2.errors
from psycopg2.extensions import parse_dsn

Row = dict[str, Any]


class DatabaseUnavailable(Exception):
    """The database cannot be reached or is not set up. The message is safe to log."""


def redact_url(url: str) -> str:
    """``url`` without its passwords, for logs and error messages.

    Every form libpq accepts: ``scheme://user:password@host``, a
    ``password=`` (or ``sslpassword=``) query parameter, and a key/value
    connection string (``host=h password='s e'``, values quoted or not).

    >>> redact_url("postgresql://u:pw@h/db?sslmode=require&password=x")
    'postgresql://u:***@h/db?sslmode=require&password=***'
    >>> redact_url("host=h password='a b' dbname=d")
    'host=h password=*** dbname=d'
    """
    if "://" in url:
        redacted = _URI_PARAMETER.sub(_redact_parameter, url)
        scheme, _, rest = redacted.partition("://")
        colon, at = rest.find(":"), rest.find("@")
        if 0 <= colon < at:  # user:password@host
            # To the last "@" (libpq stops at the first): a raw "@", "/" or "?"
            # in a password hides more than the password, never less.
            rest = rest[:colon] + ":***" + rest[rest.rfind("@") :]
        redacted = f"{scheme}://{rest}"
    else:
        redacted = _DSN_SECRET.sub(r"\1***", url)
    # Then as libpq itself reads the string, for whatever the above did not foresee
    # (a "?" inside a password): its passwords are masked wherever they still appear.
    for secret in _libpq_secrets(url):
        for spelling in {secret, quote(secret, safe=""), quote(secret)}:
            redacted = redacted.replace(spelling, "***")
    return redacted


#: The connection parameters that hold secrets (libpq percent-decodes URI parameter names).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
# key = value in a key/value connection string; a value is quoted (backslash
# escapes inside) or runs to the next space.
_DSN_SECRET = re.compile(
    r"((?<![^\s])(?:" + "|".join(sorted(_SECRET_PARAMETERS)) + r")\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)",
    re.IGNORECASE | re.DOTALL,
)


# name=value after "?" or "&"; libpq percent-decodes names ("pass%77ord").
_URI_PARAMETER = re.compile(r"(?<=[?&])([^=&#]*)=([^&#]*)")


def _redact_parameter(match: re.Match[str]) -> str:
    name = match[1]
    return f"{name}=***" if unquote(name).lower() in _SECRET_PARAMETERS else match[0]


def _libpq_secrets(url: str) -> list[str]:
    try:
        parameters = parse_dsn(url)
    except psycopg2.ProgrammingError:  # not a connection string libpq can read
        return []
    return [parameters[name] for name in _SECRET_PARAMETERS if parameters.get(name)]


def first_line(error: BaseException) -> str:
    """What the driver says happened (server closed the connection, database
    is locked …): its first line, which libpq and SQLite never fill with a password."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class Connection:
    """A backend connection that speaks ``%s`` SQL and returns dict rows.

    :param raw: the DB-API connection (sqlite3's or psycopg2's).
    :param placeholder: the driver's parameter marker, which ``%s`` is rewritten to
        (``"?"`` for sqlite3).
    :param database: the backend it came from, whose ``query_hook`` sees each query.
    """

    def __init__(self, raw: Any, placeholder: str, database: Database) -> None:
        self.raw = raw
        self._placeholder = placeholder
        self._database = database
        #: False until the pool hands this connection out a second time.
        self.reused = False

    def sql(self, statement: str) -> str:
        if self._placeholder == "%s":
            return statement
        return statement.replace("%s", self._placeholder)

    def fetch_all(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._execute(statement, params)
        columns = [column[0] for column in cursor.description]
        # DB-API rows have one value per column of the description.
        return [dict(zip(columns, row, strict=False)) for row in cursor.fetchall()]

    def fetch_one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.fetch_all(statement, params)
        return rows[0] if rows else None

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        return self._execute(statement, params).rowcount

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self.raw.cursor().executemany(self.sql(statement), rows)

    def _execute(self, statement: str, params: Sequence[Any]) -> Any:
        cursor = self.raw.cursor()
        sql = self.sql(statement)
        hook = self._database.query_hook
        # With a hook installed, each query pays one call to ``hook.active()`` when it is off.
        if hook is None or not hook.active():
            cursor.execute(sql, params)
            return cursor
        started = time.perf_counter()
        try:
            cursor.execute(sql, params)
        finally:
            hook.record(statement, time.perf_counter() - started)
        return cursor


class QueryHook(NamedTuple):
    """Lets a tool see every statement the app runs: the profiler installs one (webapp/profiler.py).

    :param active: called before each query; the query is timed only when it returns True.
    :param record: called after a timed query with its text (placeholders, not the bound
        values) and its duration in seconds.
    """

    active: Callable[[], bool]
    record: Callable[[str, float], None]


class Database:
    """A backend: hands out connections, one per thread at a time.

    :param url: the ``DATABASE_URL`` it connects to (see :func:`redact_url` before
        showing it anywhere).
    """

    dialect: str
    #: Errors that mean "the server is gone", not "the query is wrong".
    disconnect_errors: tuple[type[BaseException], ...]

    def __init__(self, url: str) -> None:
        self.url = url
        #: Set by whoever wants to observe queries; None costs a query nothing.
        self.query_hook: QueryHook | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _forked(self) -> bool:
        """True (once) in a child process: whatever the parent opened is not ours."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        return True

    def acquire(self, *, fresh: bool = False) -> Connection:
        """A connection for this thread; ``fresh`` forces a new one."""
        raise NotImplementedError

    def release(self, connection: Connection, *, broken: bool = False) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the idle connections of this process."""
        raise NotImplementedError

    def schema_sql(self) -> str:
        return resources.files(__package__).joinpath(f"schema_{self.dialect}.sql").read_text()

    def init_schema(self) -> None:
        with self.session() as session:
            session.run_script(self.schema_sql())

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits if the block succeeds, rolls back if it raises."""
        session = Session(self)
        try:
            yield session
        except BaseException:
            session.end(commit=False)
            raise
        session.end(commit=True)


class Session:
    """The connection one request (or one command) uses, borrowed lazily.

    Reads are retried once on a fresh connection when a pooled connection
    turns out to be dead, which is what every pooled connection is after a
    database restart: the first request after it succeeds instead of failing.

    :param database: the backend to borrow the connection from, on the first query.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self.database.acquire()
        return self._connection

    def fetch_all(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._read(lambda connection: connection.fetch_all(statement, params))

    def fetch_one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        return self._read(lambda connection: connection.fetch_one(statement, params))

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        return self._guard(lambda: self.connection.execute(statement, params))

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self._guard(lambda: self.connection.execute_many(statement, rows))

    def run_script(self, script: str) -> None:
        raw = self.connection.raw
        if isinstance(raw, sqlite3.Connection):
            # executescript commits first; the script is idempotent DDL.
            self._guard(lambda: raw.executescript(script))
        else:
            self._guard(lambda: raw.cursor().execute(script))

    def _read(self, query: Any) -> Any:
        connection = self.connection
        try:
            return query(connection)
        except self.database.disconnect_errors as error:
            if not connection.reused:
                self._fail(error)
            # A pooled connection died while idle (the server restarted): retry once.
            self.database.release(connection, broken=True)
            self._connection = self.database.acquire(fresh=True)
            return self._guard(lambda: query(self._connection))
        except psycopg2.errors.UndefinedTable:
            self._no_schema()

    def _guard(self, operation: Any) -> Any:
        try:
            return operation()
        except self.database.disconnect_errors as error:
            self._fail(error)
        except psycopg2.errors.UndefinedTable:
            self._no_schema()

    def _no_schema(self) -> None:
        self.end(commit=False)
        raise DatabaseUnavailable(
            "the database has no schema yet, or one older than the app's: "
            "run `flask --app webapp init-db`"
        ) from None

    def _fail(self, error: BaseException) -> None:
        if self._connection is not None:
            self.database.release(self._connection, broken=True)
            self._connection = None
        if isinstance(error, sqlite3.OperationalError) and SQLITE_SCHEMA_ERROR.match(str(error)):
            # Reachable, but without the app's tables: "database unavailable" would send
            # whoever reads it to the file or the disk instead of the schema.
            raise DatabaseUnavailable(
                f"the database ({redact_url(self.database.url)}) does not have the app's schema"
                f" ({first_line(error)}): the app applies schema_sqlite.sql only to a database"
                " whose PRAGMA user_version is below the one the script ends with, so raise that"
                " number whenever the schema changes, or start from a new database file"
            ) from None
        raise DatabaseUnavailable(
            f"database unavailable ({redact_url(self.database.url)}): {first_line(error)}"
        ) from None

    def end(self, *, commit: bool) -> None:
        """Commit or roll back, and give the connection back."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        broken = False
        try:
            if commit:
                connection.raw.commit()
            else:
                connection.raw.rollback()
        except self.database.disconnect_errors:
            broken = True
            if commit:
                raise DatabaseUnavailable("database unavailable while committing") from None
        finally:
            self.database.release(connection, broken=broken)


#: How SQLite says a statement names a table or column the database lacks: its schema is
#: not the one the app's queries are written for.
SQLITE_SCHEMA_ERROR = re.compile(r"no such (?:table|column)|table \S+ has no column named")


class SQLiteDatabase(Database):
    """An embedded database file: one connection per thread, kept open.

    The schema is created on first use, so a fresh checkout needs no setup.

    :param url: ``sqlite:///`` and the file's path (its directory is created if needed).
    """

    dialect = "sqlite"
    disconnect_errors = (sqlite3.OperationalError,)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = Path(url.removeprefix("sqlite:///"))
        self._local = threading.local()
        self._schema_checked = False

    def acquire(self, *, fresh: bool = False) -> Connection:
        if self._forked():
            self._local = threading.local()
        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            connection = Connection(self._connect(), "?", self)
            self._local.connection = connection
        else:
            connection.reused = True
        return connection

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            raw = sqlite3.connect(self.path, timeout=5.0)
            raw.execute("PRAGMA foreign_keys = ON")
            # WAL lets readers in every uWSGI worker go on while a seed or edit writes.
            raw.execute("PRAGMA journal_mode = WAL")
            raw.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_checked:
                with self._lock:
                    script = self.schema_sql()
                    # Only a database older than the script is written to: a
                    # worker's start must not take the write lock every time.
                    if raw.execute("PRAGMA user_version").fetchone()[0] < _script_version(script):
                        raw.executescript(script)
                    self._schema_checked = True
        except (OSError, sqlite3.Error) as error:
            raise DatabaseUnavailable(f"cannot open {self.path}: {error}") from None
        return raw

    def release(self, connection: Connection, *, broken: bool = False) -> None:
        if broken:
            self._local.connection = None
            connection.raw.close()

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.raw.close()
            self._local.connection = None


def _script_version(script: str) -> int:
    """The ``PRAGMA user_version = N`` a schema script ends with."""
    found = re.search(r"PRAGMA user_version = (\d+);", script)
    if found is None:
        # A copy of the template with its own schema may not know the line is needed.
        raise DatabaseUnavailable(
            "schema_sqlite.sql sets no `PRAGMA user_version = N;` (at its end): the app applies"
            " the script to a database whose user_version is below N, and never without one"
        )
    return int(found.group(1))


class PostgresDatabase(Database):
    """PostgreSQL through psycopg2, with a small per-process pool.

    Idle connections are kept, most recently used first, up to ``pool_size``;
    more threads than that still get a connection, which is closed after use
    instead of kept.

    :param url: a libpq URL, ``postgresql://user:password@host:5432/dbname``.
    :param pool_size: idle connections kept per process (``DATABASE_POOL_SIZE``).
    :param connect_timeout: seconds a connection attempt may take before
        :class:`DatabaseUnavailable` (``DATABASE_CONNECT_TIMEOUT``).
    """

    dialect = "postgresql"
    disconnect_errors = (psycopg2.OperationalError, psycopg2.InterfaceError)

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: int = 3) -> None:
        super().__init__(url)
        self.pool_size = pool_size
        try:
            self._parameters = parse_dsn(url)
        except psycopg2.ProgrammingError:
            raise ValueError(
                f"DATABASE_URL is not a valid PostgreSQL URL: {redact_url(url)}"
            ) from None
        # No session settings (no `options`, no SET): behind PgBouncer's transaction pooling a
        # connection is a different server session at every transaction, and PgBouncer refuses
        # an `options` startup parameter. Timestamps need none: the models convert them to UTC.
        self._parameters.setdefault("connect_timeout", str(connect_timeout))
        self._parameters.setdefault("application_name", "webapp")
        self._idle: list[Connection] = []

    def acquire(self, *, fresh: bool = False) -> Connection:
        with self._lock:
            if self._forked():
                self._idle = []  # the parent's sockets: never touch them here
            if fresh:
                self._close_idle()  # they share the fate of the one that just died
            elif self._idle:
                connection = self._idle.pop()
                connection.reused = True
                return connection
        try:
            raw = psycopg2.connect(**self._parameters)
        except psycopg2.OperationalError as error:
            raise DatabaseUnavailable(
                f"cannot connect to {redact_url(self.url)}: {first_line(error)}"
            ) from None
        return Connection(raw, "%s", self)

    def release(self, connection: Connection, *, broken: bool = False) -> None:
        raw = connection.raw
        if not broken and not raw.closed:
            with self._lock:
                if len(self._idle) < self.pool_size and not self._forked():
                    self._idle.append(connection)
                    return
        if not raw.closed:
            raw.close()

    def _close_idle(self) -> None:
        for connection in self._idle:
            connection.raw.close()
        self._idle = []

    def close(self) -> None:
        with self._lock:
            if not self._forked():
                self._close_idle()
            self._idle = []


def open_database(url: str, *, pool_size: int = 4, connect_timeout: int = 3) -> Database:
    """The backend for ``url``: ``sqlite:///path`` or ``postgresql://…``.

    ValueError, its message starting with ``DATABASE_URL`` and never showing a password,
    if ``url`` is neither.
    """
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # its message may quote the host part, password and all
        raise ValueError(f"DATABASE_URL is not a valid URL: {redact_url(url)}") from None
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ValueError("DATABASE_URL for SQLite must be sqlite:///path/to/file.db")
        if url.removeprefix("sqlite:///") == ":memory:":
            # Each thread's connection would have a database of its own, gone when it closes.
            raise ValueError(
                "DATABASE_URL for SQLite must name a file (sqlite:///path/to/file.db):"
                " an in-memory database is gone when the command ends"
            )
        return SQLiteDatabase(url)
    if scheme in {"postgresql", "postgres"}:
        return PostgresDatabase(url, pool_size=pool_size, connect_timeout=connect_timeout)
    raise ValueError(f"DATABASE_URL has an unsupported scheme {scheme!r}: use sqlite or postgresql")
