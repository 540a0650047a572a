"""The writer: a request hands its profile over and goes; the profile is stored on another thread.

A bounded queue per process: full, it drops and counts (one warning per run of drops),
never blocks; drained when the interpreter exits; started afresh in a forked child.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import request_profiler
from request_profiler import DirectoryStore, ProfilerMiddleware
from request_profiler.store import new_profile_id
from request_profiler.writer import ProfileWriter

from .helpers import environ_for, hello_app, stored


class GatedStore(DirectoryStore):
    """A DirectoryStore whose saves wait for ``gate``, and which notes the thread that saved
    each profile."""

    def __init__(self, directory: Path, **options: Any) -> None:
        super().__init__(directory, **options)
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []

    def save(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        self.save_many([(profile_id, meta, data)])

    def save_many(self, profiles: Sequence[tuple[str, Mapping[str, Any], bytes]]) -> None:
        self.threads += [threading.current_thread()] * len(profiles)
        assert self.gate.wait(10), "the test never opened the gate"
        super().save_many(profiles)


def serve(app, path: str = "/", **options) -> bytes:
    """One request as a server makes it; unlike helpers.run, it does not wait for the writers."""
    body = app(environ_for(path, **options), lambda status, headers, exc_info=None: None)
    try:
        return b"".join(body)
    finally:
        body.close()


def profile(number: int) -> tuple[str, Any]:
    """A profile as the middleware hands it over: its id and what makes it."""
    profile_id = new_profile_id()
    return profile_id, lambda: ({"id": profile_id, "n": number}, b"data")


def test_requests_are_served_while_the_store_is_stuck_and_stored_after(store_dir: Path) -> None:
    store = GatedStore(store_dir)
    middleware = ProfilerMiddleware(hello_app, sample_rate=1.0, store=store, max_pending=8)

    bodies = [serve(middleware, f"/{n}") for n in range(5)]

    assert bodies == [f"hello /{n}".encode() for n in range(5)]
    assert not store_dir.exists()  # nothing stored yet: every save waits at the gate
    store.gate.set()
    assert sorted(meta["path"] for meta in stored(store_dir)) == [f"/{n}" for n in range(5)]
    assert threading.current_thread() not in store.threads
    assert {thread.name for thread in store.threads} == {"request_profiler writer"}


def test_a_full_queue_drops_counts_and_warns_at_most_once_a_minute(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = GatedStore(store_dir)
    writer = ProfileWriter(store, max_pending=2)

    # One profile is taken by the thread (waiting at the gate), two wait in the queue.
    accepted = [writer.submit(*profile(0))]
    assert _wait_for(lambda: store.threads)
    accepted += [writer.submit(*profile(n)) for n in range(1, 6)]
    warnings = [r for r in caplog.records if "dropping" in r.getMessage()]

    assert accepted == [True, True, True, False, False, False]
    assert writer.dropped == 3
    assert len(warnings) == 1
    store.gate.set()
    assert writer.flush()
    assert sorted(meta["n"] for meta in DirectoryStore(store_dir).recent()) == [0, 1, 2]
    # Room again, then full again within the minute: counted, not warned about again.
    store.gate.clear()
    assert writer.submit(*profile(6))
    assert _wait_for(lambda: len(store.threads) == 4)
    assert [writer.submit(*profile(n)) for n in (7, 8, 9)] == [True, True, False]
    assert writer.dropped == 4
    assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 1
    store.gate.set()
    writer.close()
    assert "4 profiles were dropped" in caplog.records[-1].getMessage()


class FirstSaveGated(GatedStore):
    """Only the first save waits at the gate: the writer's thread is held, the caller's is not."""

    def save_many(self, profiles: Sequence[tuple[str, Mapping[str, Any], bytes]]) -> None:
        if self.threads:
            self.threads += [threading.current_thread()] * len(profiles)
            DirectoryStore.save_many(self, profiles)
        else:
            super().save_many(profiles)


def test_a_caller_finding_a_batch_queued_stores_it_itself(store_dir: Path) -> None:
    store = FirstSaveGated(store_dir)
    writer = ProfileWriter(store, batch=3, delay=0.01)
    writer.submit(*profile(0))
    assert _wait_for(lambda: store.threads)  # the thread holds profile 0 at the gate
    for n in (1, 2):
        writer.submit(*profile(n))
        writer.store_if_behind()  # fewer than a batch queued: nothing to do
    assert store.threads == [store.threads[0]]

    writer.submit(*profile(3))
    writer.store_if_behind()

    assert store.threads[1:] == [threading.current_thread()] * 3
    assert [meta["n"] for meta in DirectoryStore(store_dir).recent()] == [3, 2, 1]  # all queued
    store.gate.set()
    assert writer.flush()


def test_no_caller_helps_a_store_stuck_on_one_profile(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("request_profiler.writer.STUCK_SECONDS", 0.05)
    store = FirstSaveGated(store_dir)
    writer = ProfileWriter(store, batch=2, max_pending=3, delay=0.01)
    writer.submit(*profile(0))
    assert _wait_for(lambda: store.threads)
    time.sleep(0.1)  # stuck for longer than STUCK_SECONDS

    accepted = []
    for n in range(1, 6):
        accepted.append(writer.submit(*profile(n)))
        writer.store_if_behind()

    assert store.threads == [store.threads[0]]  # nobody else saved
    assert accepted == [True, True, True, False, False] and writer.dropped == 2
    store.gate.set()
    assert writer.flush()


def test_the_metadata_survives_a_server_that_clears_the_environ(
    make_middleware, store_dir: Path, token: str
) -> None:
    middleware = make_middleware()
    environ = environ_for("/episodes", query_string="page=2", headers={"X-Profile-Token": token})
    body = middleware(environ, lambda status, headers, exc_info=None: None)
    b"".join(body)
    body.close()
    environ.clear()  # uWSGI reuses the dict for the next request once the response is closed

    [meta] = stored(store_dir)
    assert (meta["path"], meta["query"], meta["status"]) == ("/episodes", "page=2", 200)


def test_the_thread_ends_when_idle_and_the_next_profile_starts_another(store_dir: Path) -> None:
    writer = ProfileWriter(DirectoryStore(store_dir), idle_seconds=0.05)
    writer.submit(*profile(0))
    assert writer.flush()
    assert _wait_for(lambda: writer._thread is None)

    writer.submit(*profile(1))

    assert writer.flush()
    assert len(DirectoryStore(store_dir).recent()) == 2


def test_a_profile_handed_to_a_waiting_thread_is_stored_within_the_delay(store_dir: Path) -> None:
    """The thread waits for work for up to ``idle_seconds``; a profile must not wait that long.
    (It did: one queued while the thread waited sat there until the wait timed out, so another
    host's viewer listed it seconds late, up to idle_seconds.)"""
    writer = ProfileWriter(DirectoryStore(store_dir), delay=0.01, idle_seconds=60)
    writer.submit(*profile(0))
    assert _wait_for(lambda: len(DirectoryStore(store_dir).recent()) == 1)
    # The queue is empty: the thread now waits for work.

    writer.submit(*profile(1))

    # Not flush(): a viewer on another host cannot flush this process's queue.
    assert _wait_for(lambda: len(DirectoryStore(store_dir).recent()) == 2, timeout=10)
    assert writer._thread is not None  # the same thread, still waiting for work
    writer.close()


def _submit_in_child(writer: ProfileWriter, done: Any) -> None:
    writer.submit(*profile(1))
    done.put(writer.flush())


def test_a_forked_child_stores_with_its_own_thread_and_not_the_parents_queue(
    store_dir: Path,
) -> None:
    store = GatedStore(store_dir)
    writer = ProfileWriter(store)
    writer.submit(*profile(0))  # the parent's, waiting at the gate while the child forks
    assert _wait_for(lambda: store.threads)
    store.gate.set()  # the child's copy of the event is open too: its save goes through
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_submit_in_child, args=(writer, done))
    child.start()
    child.join(30)

    assert child.exitcode == 0 and done.get(timeout=5) is True
    assert writer.flush()
    assert sorted(meta["n"] for meta in DirectoryStore(store_dir).recent()) == [0, 1]


_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from request_profiler import DirectoryStore, ProfilerMiddleware

    class SlowStore(DirectoryStore):
        def save(self, *args):
            time.sleep(0.05)  # slower than the requests: the queue is never empty before exit
            super().save(*args)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"served"]

    middleware = ProfilerMiddleware(app, sample_rate=1.0, store=SlowStore(sys.argv[1]))
    for n in range(20):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/{n}", "wsgi.url_scheme": "http"}
        body = middleware(environ, lambda status, headers, exc_info=None: None)
        b"".join(body)
        body.close()
    print(len(middleware.writer._pending))
    """
)


def test_what_is_queued_at_exit_is_stored_before_the_process_ends(tmp_path: Path) -> None:
    package_root = Path(request_profiler.__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(package_root)}

    completed = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(tmp_path / "profiles")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert int(completed.stdout) > 0, "nothing was queued at exit: the test proves nothing"
    paths = sorted(meta["path"] for meta in DirectoryStore(tmp_path / "profiles").recent())
    assert paths == sorted(f"/{n}" for n in range(20))
    assert "not stored" not in completed.stderr


def test_max_pending_must_be_positive(store_dir: Path) -> None:
    with pytest.raises(ValueError):
        ProfileWriter(DirectoryStore(store_dir), max_pending=0)


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
