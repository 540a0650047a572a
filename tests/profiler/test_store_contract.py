"""What every store promises, checked on each: DirectoryStore and PostgresStore (a real server).

Whole profiles or none, newest first, the oldest dropped past either bound, the profile just
saved kept by its own save, strict ids, and the bounds kept with several writers at once,
threads and forked processes (uWSGI workers) alike.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from request_profiler import DirectoryStore, PostgresStore, Store
from request_profiler.store import new_profile_id

MakeStore = Callable[..., Store]


@pytest.fixture(params=["directory", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """``make_store(**bounds)``: stores of one kind over one place (a directory, or a table)."""
    if request.param == "directory":
        return lambda **bounds: DirectoryStore(tmp_path / "profiles", **bounds)
    url = request.getfixturevalue("postgres_url")
    made: list[PostgresStore] = []

    def make(**bounds: Any) -> PostgresStore:
        made.append(PostgresStore(url, **bounds))
        return made[-1]

    request.addfinalizer(lambda: [store.close() for store in made])
    return make


def save(store: Store, data: bytes = b"data", *, at: float | None = None, **meta: Any) -> str:
    profile_id = new_profile_id(at)
    store.save(profile_id, {"id": profile_id, **meta}, data)
    return profile_id


def ids(store: Store) -> list[str]:
    return [meta["id"] for meta in store.recent()]


def test_save_load_and_recent_newest_first(make_store: MakeStore) -> None:
    store = make_store()
    first = save(store, b"\x00\n binary \xff", at=1000.0, path="/first", query="a=<b>&c='d'")
    second = save(store, at=2000.0, path="/second", sql=[["SELECT 1", 0.5]])

    assert [meta["path"] for meta in store.recent()] == ["/second", "/first"]
    assert store.load(first) == (
        {"id": first, "path": "/first", "query": "a=<b>&c='d'"},
        b"\x00\n binary \xff",
    )
    assert store.load(second) == (
        {"id": second, "path": "/second", "sql": [["SELECT 1", 0.5]]},
        b"data",
    )


def test_an_empty_store_and_an_unknown_id(make_store: MakeStore) -> None:
    store = make_store()

    assert store.recent() == []
    assert store.load(new_profile_id()) is None


def test_the_count_bound_removes_the_oldest_first(make_store: MakeStore) -> None:
    store = make_store(max_profiles=3)
    saved = [save(store, at=1000.0 + n) for n in range(5)]

    assert ids(store) == saved[:1:-1]


def test_the_byte_bound_removes_the_oldest_first(make_store: MakeStore) -> None:
    # Each profile counts its metadata as JSON, a newline and its data: about 1,050 bytes here.
    store = make_store(max_bytes=2500)
    saved = [save(store, b"x" * 1000, at=1000.0 + n) for n in range(4)]

    assert ids(store) == [saved[3], saved[2]]


def test_requested_profiles_are_pruned_after_every_other(make_store: MakeStore) -> None:
    """Sampled profiles push out each other, never one a token asked for; requested ones
    alone past the bound go oldest first, as any."""
    store = make_store(max_profiles=3)
    asked = save(store, at=1000.0, trigger="token")
    sampled = [save(store, at=1001.0 + n, trigger="sample") for n in range(5)]

    assert ids(store) == [sampled[4], sampled[3], asked]
    assert store.load(asked) == ({"id": asked, "trigger": "token"}, b"data")
    later = [save(store, at=2000.0 + n, trigger="token") for n in range(3)]
    assert ids(store) == later[::-1]


def test_a_profile_larger_than_the_bound_is_kept_until_the_next_save(make_store: MakeStore) -> None:
    store = make_store(max_bytes=100)
    old = save(store, at=1000.0)
    huge = save(store, b"x" * 1000, at=2000.0)

    assert ids(store) == [huge]
    assert store.load(old) is None
    small = save(store, at=3000.0)
    assert ids(store) == [small]


@pytest.mark.parametrize(
    "profile_id",
    [
        "../outside",
        "",
        "20240101T000000000000-../../x",
        "20240101T000000000000-ABCDEFABCDEF",
        "20240101T000000000000-abcdefabcdef\n",
        "20240101T000000000000-abcdefabcdef' OR '1'='1",
    ],
)
def test_malformed_ids_are_refused(make_store: MakeStore, profile_id: str) -> None:
    store = make_store()
    save(store)

    assert store.load(profile_id) is None
    with pytest.raises(ValueError):
        store.save(profile_id, {}, b"")
    assert len(store.recent()) == 1


def test_readers_see_whole_profiles_only(make_store: MakeStore) -> None:
    writer, reader_store = make_store(max_profiles=5), make_store(max_profiles=5)
    data = os.urandom(256 * 1024)
    done = threading.Event()
    seen: list[bytes] = []

    def read_continuously() -> None:
        while not done.is_set():
            for meta in reader_store.recent():
                loaded = reader_store.load(meta["id"])
                if loaded is not None:  # pruned meanwhile
                    seen.append(loaded[1])

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for _ in range(30):
            save(writer, data)
    finally:
        done.set()
        reader.join()

    assert seen and all(loaded == data for loaded in seen)


def test_threads_saving_at_once_respect_the_bound(make_store: MakeStore) -> None:
    errors: list[BaseException] = []

    def save_ten() -> None:
        store = make_store(max_profiles=20)  # one per thread: as many connections as writers
        try:
            for _ in range(10):
                save(store)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=save_ten) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(make_store().recent()) == 20


def _save_twenty(store: Store) -> None:
    for _ in range(20):
        save(store, os.urandom(1000))


def test_processes_saving_at_once_respect_the_bound(make_store: MakeStore) -> None:
    # Made in the parent and forked, as uWSGI builds the app in its master, then forks workers.
    store = make_store(max_profiles=10)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_save_twenty, args=(store,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(store.recent()) == 10


def test_bounds_must_be_positive(make_store: MakeStore) -> None:
    with pytest.raises(ValueError):
        make_store(max_profiles=0)
    with pytest.raises(ValueError):
        make_store(max_bytes=0)
