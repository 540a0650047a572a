"""Stores profiles on a background thread, so that a request only hands its profile over.

    writer = ProfileWriter(store, max_pending=64)
    writer.submit(profile_id, lambda: (meta, data))   # never blocks; False if dropped
    writer.flush(timeout=5)                            # True once all handed over are stored
    writer.dropped                                     # profiles dropped because the queue was full

Each process has its own queue and thread: the thread starts with the first
profile a process hands over (so a pre-forking server's master, which loaded
the app, starts none), stops after a few idle seconds, and is drained when
the interpreter exits (``atexit``; uWSGI runs it when a worker stops, is
recycled or reloads gracefully, with ``enable-threads`` so the thread runs at
all). What a killed process had queued is lost with it.

The callable is run on the writer's thread: building the metadata and
serialising the profile cost the request nothing, unless the thread is
getting no turns (a saturated worker: see :meth:`ProfileWriter.store_if_behind`),
when the request stores the queued batch itself after its response. A batch
goes to the store as one file where it can (``DirectoryStore.save_many``).
When the queue is full the profile is dropped and counted, with a warning at
the first drop and at most one a minute after that (and the total at exit):
no request waits for the thread, nor for a store stuck on one profile.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .store import Store

logger = logging.getLogger("request_profiler")

#: A queue that stays full is reported at most this often.
WARN_EVERY_SECONDS = 60.0
#: A store busy with one profile for longer is stuck: nobody waits for it.
STUCK_SECONDS = 1.0

#: Makes a profile's metadata and data, on the writer's thread.
MakeProfile = Callable[[], tuple[Mapping[str, Any], bytes]]


class ProfileWriter:
    """A bounded queue of profiles per process, saved to ``store`` by one thread.

    The thread works in batches: the first profile queued wakes it, and it stores all that
    are queued ``delay`` seconds later, or at once when ``batch`` are. Waking a thread and
    handing it the GIL costs more CPU than storing one small profile.
    A full batch still queued when another profile arrives means the thread is not
    getting turns: see :meth:`store_if_behind`.

    :param store: where the profiles go.
    :param max_pending: profiles queued at most; more are dropped and counted in :attr:`dropped`.
    :param batch: queued profiles that wake the thread.
    :param delay: seconds a profile may wait for a batch to fill.
    :param idle_seconds: the thread ends after this long without work (the next profile starts
        a new one), so idle processes keep no thread.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 64,
        batch: int = 32,
        delay: float = 0.5,
        idle_seconds: float = 5.0,
    ) -> None:
        if max_pending < 1 or batch < 1:
            raise ValueError("max_pending and batch must be positive")
        self.store = store
        self.max_pending = max_pending
        self.batch = min(batch, max_pending)
        self.delay = delay
        self.idle_seconds = idle_seconds
        #: Profiles dropped because the queue was full, in this process.
        self.dropped = 0
        self._warned_at = -math.inf
        self._pid = -1
        self._reset()
        _live_writers.add(self)

    def _reset(self) -> None:
        # Also run in a forked child: the parent's lock may have been held at the fork, and
        # its queue is the parent's to store.
        self._pid = os.getpid()
        self._ready = threading.Condition(threading.Lock())
        self._pending: collections.deque[tuple[str, MakeProfile]] = collections.deque()
        self._in_progress = 0
        self._busy_since = time.monotonic()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False
        # Set by flush(): the thread stores what is queued without waiting for a batch,
        # even if it starts that wait after flush()'s notify.
        self._hurry = False

    def submit(self, profile_id: str, make: MakeProfile) -> bool:
        """Queue one profile; False (and counted) if the queue is full or the writer closed."""
        if self._pid != os.getpid():
            self._reset()
        with self._ready:
            if self._closed or len(self._pending) >= self.max_pending:
                self.dropped += 1
                now = time.monotonic()
                if now - self._warned_at >= WARN_EVERY_SECONDS:
                    self._warned_at = now
                    logger.warning(
                        "request_profiler: %d profiles are waiting to be stored; dropping new "
                        "ones until the store catches up (%d dropped in this process so far)",
                        len(self._pending),
                        self.dropped,
                    )
                return False
            self._pending.append((profile_id, make))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="request_profiler writer", daemon=True
                )
                self._thread.start()
            elif len(self._pending) == 1 or len(self._pending) >= self.batch:
                # The first wakes a thread waiting for work (for up to idle_seconds), which then
                # gives a batch ``delay`` to fill; all: flush() may be waiting on it too.
                self._ready.notify_all()
        return True

    def store_if_behind(self) -> None:
        """Store the queued profiles on this thread if a batch is waiting.

        A worker that is never idle (saturated) gives the thread almost no turns:
        CPython hands the GIL to a waiting thread only every switch interval (5 ms),
        and the thread gives it back at each file operation, so it falls behind until
        its queue drops profiles. The caller (after its response has gone) then
        stores the batch itself: the queue stays short at the CPU cost the thread
        would have had. Waiting for the thread instead measured slower (the worker sits
        idle while the scheduler runs the thread). A store stuck on one profile for
        over a second gets no help: its queue fills and drops, and no request waits.
        """
        if self._pid != os.getpid():
            return
        with self._ready:
            if len(self._pending) < self.batch:
                return
            if self._in_progress and time.monotonic() - self._busy_since > STUCK_SECONDS:
                return
            work = list(self._pending)
            self._pending.clear()
        self._store(work)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every profile handed over so far in this process is stored (or failed)."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with self._ready:
            self._hurry = True
            self._ready.notify_all()  # no waiting for a batch to fill
            while self._pending or self._in_progress:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ready.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Store what is queued, then stop the thread; later profiles are dropped."""
        if self._pid != os.getpid():
            return
        with self._ready:
            self._closed = True
            thread = self._thread
            self._ready.notify_all()
        if thread is not None:
            thread.join(timeout)
        if self._pending:
            logger.warning(
                "request_profiler: %d profiles were not stored before exit", len(self._pending)
            )
        if self.dropped:
            logger.warning(
                "request_profiler: %d profiles were dropped in this process (the queue was full)",
                self.dropped,
            )

    def _run(self) -> None:
        last_work = time.monotonic()
        try:
            while True:
                with self._ready:
                    if not self._pending and not self._closed:
                        self._ready.wait(self.idle_seconds)  # until submit() queues one
                    if 0 < len(self._pending) < self.batch and not self._closed:
                        if not self._hurry:
                            self._ready.wait(self.delay)
                    self._hurry = False
                    if not self._pending:
                        if self._closed or time.monotonic() - last_work >= self.idle_seconds:
                            # Under the lock: submit() then starts another thread.
                            self._thread = None
                            self._ready.notify_all()
                            return
                        continue
                    work = list(self._pending)
                    self._pending.clear()
                    self._in_progress = len(work)
                    self._busy_since = time.monotonic()
                try:
                    self._store(work)
                finally:
                    last_work = time.monotonic()
                    with self._ready:
                        self._in_progress = 0
                        self._ready.notify_all()
        finally:
            # Ended by something other than idleness (an interpreter shutting down):
            # the next profile starts a new thread rather than queueing forever.
            with self._ready:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._ready.notify_all()

    def _store(self, work: list[tuple[str, MakeProfile]]) -> None:
        """Store ``work``: as one file when the store can (``save_many``), since creating a
        file costs more than writing a small profile into it."""
        profiles = []
        for profile_id, make in work:
            try:
                profiles.append((profile_id, *make()))
            except Exception:
                self._failed()
        save_many = getattr(self.store, "save_many", None)
        try:
            if save_many is not None and profiles:
                save_many(profiles)
            else:
                for profile in profiles:
                    self.store.save(*profile)
                    self._busy_since = time.monotonic()
        except Exception:
            self._failed()
        else:
            if len(profiles) == len(work):
                self._failing = False

    def _failed(self) -> None:
        # Once per run of failures: a full disk must not flood the log with a traceback
        # per profile. The request was served long ago.
        if not self._failing:
            self._failing = True
            logger.warning(
                "request_profiler: storing a profile failed; requests are still served. "
                "Further failures are not logged until it succeeds again.",
                exc_info=True,
            )


_live_writers: weakref.WeakSet[ProfileWriter] = weakref.WeakSet()


def flush_all(timeout: float = 5.0) -> bool:
    """:meth:`ProfileWriter.flush` every writer of this process; False if one timed out."""
    deadline = time.monotonic() + timeout
    return all(
        writer.flush(max(0.0, deadline - time.monotonic())) for writer in list(_live_writers)
    )


@atexit.register
def _drain_at_exit() -> None:
    for writer in list(_live_writers):
        writer.close()
