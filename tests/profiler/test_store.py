"""DirectoryStore: atomic files, bounds by count and bytes, strict ids, several writers."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from request_profiler import DirectoryStore
from request_profiler.store import is_profile_id, new_profile_id


def save(store: DirectoryStore, data: bytes = b"data", *, at: float | None = None, **meta) -> str:
    profile_id = new_profile_id(at)
    store.save(profile_id, {"id": profile_id, **meta}, data)
    return profile_id


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name != ".lock")


def test_ids_sort_by_time_and_say_nothing_else() -> None:
    earlier, later = new_profile_id(1_700_000_000.0), new_profile_id(1_700_000_000.000001)

    assert earlier.startswith("20231114T221320000000-")
    assert earlier < later
    assert is_profile_id(earlier)


def test_save_load_and_recent_newest_first(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "new" / "dir")
    first = save(store, b"\x00\n binary", at=1000.0, path="/first")
    second = save(store, at=2000.0, path="/second")

    assert [meta["path"] for meta in store.recent()] == ["/second", "/first"]
    assert store.load(first) == ({"id": first, "path": "/first"}, b"\x00\n binary")
    assert files(tmp_path / "new" / "dir") == [f"{first}.profile", f"{second}.profile"]


def test_the_count_bound_removes_the_oldest_first(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_profiles=3)
    ids = [save(store, at=1000.0 + n) for n in range(5)]

    assert [meta["id"] for meta in store.recent()] == ids[:1:-1]


def test_the_byte_bound_removes_the_oldest_first(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_bytes=2500)
    ids = [save(store, b"x" * 1000, at=1000.0 + n) for n in range(4)]

    assert [meta["id"] for meta in store.recent()] == [ids[3], ids[2]]
    assert sum(path.stat().st_size for path in tmp_path.glob("*.profile")) <= 2500


def test_a_profile_larger_than_the_bound_is_kept_until_the_next_save(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_bytes=100)
    old = save(store, at=1000.0)
    huge = save(store, b"x" * 1000, at=2000.0)

    assert [meta["id"] for meta in store.recent()] == [huge]
    assert store.load(old) is None


@pytest.mark.parametrize(
    "profile_id",
    [
        "../outside",
        "..",
        "",
        "20240101T000000000000-../../x",
        "20240101T000000000000-abcdefabcdef/../x",
        "20240101T000000000000-ABCDEFABCDEF",
        "20240101T000000000000-abcdefabcdef\n",
    ],
)
def test_malformed_ids_are_refused(tmp_path: Path, profile_id: str) -> None:
    store = DirectoryStore(tmp_path / "store")
    (tmp_path / "outside.profile").write_bytes(b'{"id": "outside"}\nstolen')

    assert store.load(profile_id) is None
    with pytest.raises(ValueError):
        store.save(profile_id, {}, b"")


def test_an_unknown_id_and_an_absent_directory_are_empty(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "never-created")

    assert store.load(new_profile_id()) is None
    assert store.recent() == []


def test_readers_see_whole_profiles_only(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_profiles=5)
    data = os.urandom(512 * 1024)
    done = threading.Event()
    seen: list[int] = []

    def read_continuously() -> None:
        while not done.is_set():
            for meta in store.recent():
                loaded = store.load(meta["id"])
                if loaded is not None:
                    seen.append(len(loaded[1]))
                    assert loaded[1] == data

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for _ in range(40):
            save(store, data)
    finally:
        done.set()
        reader.join()

    assert seen and set(seen) == {len(data)}
    assert not [name for name in files(tmp_path) if name.startswith(".tmp-")]


def test_threads_saving_at_once_respect_the_bound(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_profiles=20, prune_every=1)
    errors: list[BaseException] = []

    def save_ten() -> None:
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
    assert len(store.recent()) == 20


def _save_twenty(directory: str) -> None:
    store = DirectoryStore(directory, max_profiles=10)
    for _ in range(20):
        save(store, os.urandom(1000))


def test_processes_saving_at_once_respect_the_bound(tmp_path: Path) -> None:
    # Forked like uWSGI workers, all writing to one directory.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_save_twenty, args=(str(tmp_path),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(DirectoryStore(tmp_path).recent()) == 10


def test_temporary_files_left_by_a_killed_writer_are_removed_once_stale(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, prune_every=1)
    save(store)
    stale, fresh = tmp_path / ".tmp-stale", tmp_path / ".tmp-fresh"
    stale.write_bytes(b"half a profile")
    fresh.write_bytes(b"being written")
    an_hour_ago = time.time() - store.stale_temp_seconds - 1
    os.utime(stale, (an_hour_ago, an_hour_ago))

    save(store)

    assert not stale.exists() and fresh.exists()


def test_an_unusable_directory_makes_save_raise(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = DirectoryStore(tmp_path / "a-file" / "profiles")

    with pytest.raises(OSError):
        save(store)
    assert store.recent() == []


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DirectoryStore(tmp_path, max_profiles=0)


def test_pruning_runs_every_prune_every_saves_and_restores_the_bounds(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_profiles=5, prune_every=3)
    counts = []
    for n in range(12):
        save(store, at=1000.0 + n)
        counts.append(len(files(tmp_path)))

    # Pruned at the 3rd, 6th, 9th and 12th saves: never above 5 + 3 - 1 files.
    assert counts == [1, 2, 3, 4, 5, 5, 6, 7, 5, 6, 7, 5]
    assert [meta["id"][:21] for meta in store.recent()] == [
        new_profile_id(1000.0 + n)[:21] for n in range(11, 6, -1)
    ]


def test_a_tenth_of_max_bytes_saved_prunes_before_prune_every(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_bytes=10_000, prune_every=100)
    for n in range(12):
        save(store, b"x" * 1200, at=1000.0 + n)
        assert sum(path.stat().st_size for path in tmp_path.glob("*.profile")) <= 10_000


def test_the_byte_bound_counts_files_another_process_saved(tmp_path: Path) -> None:
    ours, theirs = (DirectoryStore(tmp_path, max_bytes=5000, prune_every=1) for _ in range(2))
    old = save(ours, b"x" * 1000, at=1000.0)
    for n in range(3):
        save(theirs, b"y" * 1000, at=2000.0 + n)  # sizes `ours` never saw

    newest = save(ours, b"z" * 1000, at=3000.0)

    assert store_ids(tmp_path)[0] == newest and old not in store_ids(tmp_path)
    assert sum(path.stat().st_size for path in tmp_path.glob("*.profile")) <= 5000


def store_ids(directory: Path) -> list[str]:
    return [meta["id"] for meta in DirectoryStore(directory).recent()]
