"""The hook a data layer calls to list its queries in the current profile.

The data layer pays for one context-variable read per query when nothing is
being profiled::

    from time import perf_counter
    from request_profiler import record_sql, sql_capture_active

    def execute(cursor, sql, params=()):
        if not sql_capture_active():
            return cursor.execute(sql, params)
        started = perf_counter()
        try:
            return cursor.execute(sql, params)
        finally:
            record_sql(sql, perf_counter() - started)

Pass the statement text with placeholders, not the bound parameters: the text
is stored with the profile and shown in the viewer.
"""

from __future__ import annotations

from contextvars import ContextVar

#: Statements kept per profile; the count and total time still cover them all.
MAX_STATEMENTS = 500
#: Longer statements are cut, so one generated query cannot bloat a profile.
MAX_STATEMENT_CHARS = 2000


class SqlCapture:
    """The queries of one profiled request."""

    __slots__ = ("active", "statements", "count", "seconds")

    def __init__(self) -> None:
        self.active = True
        self.statements: list[tuple[str, float]] = []
        self.count = 0
        self.seconds = 0.0

    def add(self, statement: str, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        if len(self.statements) < MAX_STATEMENTS:
            self.statements.append((statement[:MAX_STATEMENT_CHARS], seconds))


# A context variable rather than a global: each thread (and each asyncio task)
# has its own, so a request served unprofiled next to a profiled one never
# records into the profiled one's list.
_current: ContextVar[SqlCapture | None] = ContextVar("request_profiler_sql", default=None)


def start_capture() -> SqlCapture:
    """Begin capturing for the request running in the current context."""
    capture = SqlCapture()
    _current.set(capture)
    return capture


def stop_capture(capture: SqlCapture) -> None:
    """End ``capture``, even when called from another context.

    ``close()`` may run in a context other than the one that started the
    capture, where the variable cannot be reset; turning the capture off is
    what makes a left-over reference harmless.
    """
    capture.active = False
    if _current.get() is capture:
        _current.set(None)


def sql_capture_active() -> bool:
    """True while the current request is being profiled."""
    capture = _current.get()
    return capture is not None and capture.active


def record_sql(statement: str, seconds: float) -> None:
    """Add one query and its duration to the current profile (no-op otherwise)."""
    capture = _current.get()
    if capture is not None and capture.active:
        capture.add(statement, seconds)
