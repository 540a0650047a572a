"""DirectoryStore's own cases: ids, paths that must not escape, an absent or unusable directory,
temporary files a killed writer leaves. What every store promises is in test_store_contract.py."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from request_profiler import DirectoryStore
from request_profiler.sql import MAX_STATEMENT_CHARS, MAX_STATEMENTS
from request_profiler.store import MAX_META_BYTES, is_profile_id, new_profile_id


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


def test_each_profile_is_one_file_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    saved = [save(store, os.urandom(64 * 1024)) for _ in range(3)]

    assert files(tmp_path) == sorted(f"{profile_id}.profile" for profile_id in saved)


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


def test_a_store_directory_that_is_a_file_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")

    for directory in (tmp_path / "a-file", tmp_path / "a-file" / "profiles"):
        store = DirectoryStore(directory)
        assert store.recent() == []
        assert store.load(new_profile_id()) is None


def _replace(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _link_to(path: Path, target: Path | str) -> None:
    """``path`` becomes a symbolic link to ``target``; a profile there is moved there first."""
    target = Path(target)
    if not target.exists():
        path.rename(target)
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


#: What a disk error, a copy cut short or a stray hand can leave where a profile was.
DAMAGES = {
    "empty": lambda path: _replace(path, b""),
    "cut in its first line": lambda path: _replace(path, path.read_bytes()[:5]),
    "not UTF-8": lambda path: _replace(path, b"\xff\xfe\xfa\n" + path.read_bytes()),
    "not an object": lambda path: _replace(path, b"null\n" + path.read_bytes()),
    "random bytes": lambda path: _replace(path, b"\x8f\x00{[" * 40),
    "a directory": lambda path: (path.unlink(), path.mkdir()),
    # json raises RecursionError, not ValueError, past its nesting limit.
    "nested too deep": lambda path: _replace(path, b"[" * 100_000 + b"\n"),
    "a symbolic link to a profile outside": lambda path: _link_to(path, path.parent.parent / "x"),
    "a symbolic link to /etc/passwd": lambda path: _link_to(path, "/etc/passwd"),
    "a symbolic link to a directory": lambda path: _link_to(path, path.parent.parent),
    # Opened for reading, a FIFO waits for a writer: every list would hang.
    "a FIFO": _fifo,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES)
def test_a_damaged_file_is_left_out_and_the_others_are_read(tmp_path: Path, damage) -> None:
    store = DirectoryStore(tmp_path)
    kept = save(store, at=1.0)
    damaged = save(store, at=2.0)

    damage(tmp_path / f"{damaged}.profile")

    assert [meta["id"] for meta in within_seconds(5, store.recent)] == [kept]
    assert within_seconds(5, lambda: store.load(damaged)) is None
    assert store.load(kept) == ({"id": kept}, b"data")


def within_seconds(seconds: float, call: Callable[[], object]) -> object:
    """``call()``'s result, or a failure if it takes longer (a thread left blocked)."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    assert result, "raised (see the thread's traceback above)"
    return result[0]


def test_a_pack_that_is_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "profiles"
    store = DirectoryStore(directory)
    pack = profiles_at(2.0, 3.0)
    store.save_many(pack)
    [pack_file] = directory.glob("*.profiles")

    _link_to(pack_file, tmp_path / "elsewhere.profiles")

    assert store.recent() == []
    assert store.load(pack[0][0]) is None


MIB = 2**20


def peak_memory(call: Callable[[], object]) -> tuple[object, int]:
    """``call()``'s result and the most memory Python held meanwhile, beyond what it held before."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_profile_is_listed_without_reading_its_data(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    huge = save(store, b"x" * (50 * MIB), at=1.0)

    metas, peak = peak_memory(store.recent)

    assert metas == [{"id": huge}]
    assert peak < MIB


@pytest.mark.parametrize("name", ["{id}.profile", "{id}+{id}+1.profiles"])
@pytest.mark.parametrize("size", [50 * MIB, 2**40], ids=["50 MiB", "1 TiB, sparse"])
def test_a_first_line_longer_than_any_metadata_is_not_read_whole(
    tmp_path: Path, name: str, size: int
) -> None:
    profile_id = new_profile_id(1.0)
    huge = tmp_path / name.format(id=profile_id)
    with huge.open("wb") as file:
        file.write(b"[" * min(size, 50 * MIB))
        file.truncate(size)  # the rest reads as zeros, never a line break
    store = DirectoryStore(tmp_path)

    metas, peak = peak_memory(store.recent)

    assert metas == []
    # What reading stops at, twice over: readline() joins the chunks it read.
    assert peak < 2 * MAX_META_BYTES + MIB
    assert store.load(profile_id) is None


def test_the_largest_metadata_the_middleware_writes_is_read(tmp_path: Path) -> None:
    """Its SQL list is bounded (MAX_STATEMENTS of MAX_STATEMENT_CHARS each); the characters
    that take the most bytes once escaped for JSON are outside the BMP (12 bytes each)."""
    statement = "\U0001d11e" * MAX_STATEMENT_CHARS
    meta = {"sql": [[statement, 1.0]] * MAX_STATEMENTS, "headers": {"X": "y" * 65536}}
    store = DirectoryStore(tmp_path)
    single = save(store, at=1.0, **meta)
    pack = [(new_profile_id(at), meta, b"data") for at in (2.0, 3.0)]
    store.save_many(pack)

    assert (
        os.path.getsize(tmp_path / f"{single}.profile") > 12 * MAX_STATEMENTS * MAX_STATEMENT_CHARS
    )
    assert len(store.recent()) == 3
    assert store.load(single) == ({"id": single, **meta}, b"data")
    assert store.load(pack[1][0]) == (meta, b"data")


@pytest.mark.parametrize(
    "name",
    [
        # Digits, but not ASCII ones: a regular expression's \d matches them.
        "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661T000000000000-abcdefabcdef.profile",
        "{id}.profile" + "x" * 200,
        "x" * 200 + "{id}.profile",
        "{id}\u2215..\u2215x.profile",
        "{id}.profile\n",
        "é{id}.profile",
    ],
)
def test_files_with_odd_names_are_not_profiles(tmp_path: Path, name: str) -> None:
    (tmp_path / name.format(id=new_profile_id(1.0))).write_bytes(b'{"id": "stranger"}\ndata')
    store = DirectoryStore(tmp_path)

    assert store.recent() == []


def test_a_file_name_that_is_not_utf8_is_passed_over(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    kept = save(store, at=1.0)
    name = os.fsencode(tmp_path) + b"/\xff" + new_profile_id(2.0).encode() + b".profile"
    with open(name, "wb") as file:
        file.write(b'{"id": "stranger"}\n')

    assert store_ids(tmp_path) == [kept]


def test_a_pack_whose_sizes_run_past_its_end_reads_what_is_there(tmp_path: Path) -> None:
    """A size of 10**18 made load() ask for that many bytes at once: a MemoryError."""
    store = DirectoryStore(tmp_path)
    newer, older = new_profile_id(2.0), new_profile_id(1.0)
    index = [[newer, {"id": newer}, 10**18], [older, {"id": older}, 4]]
    (tmp_path / f"{newer}+{older}+2.profiles").write_bytes(json.dumps(index).encode() + b"\nshort")

    assert store.load(newer) == ({"id": newer}, b"short")
    assert store.load(older) == ({"id": older}, b"")


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


# --- Packs: several profiles saved as one file ------------------------------------------


def profiles_at(*times: float, size: int = 100) -> list[tuple[str, dict, bytes]]:
    saved = []
    for at in times:
        profile_id = new_profile_id(at)
        saved.append((profile_id, {"id": profile_id}, os.urandom(size)))
    return saved


def test_save_many_writes_one_file_whose_profiles_read_back_one_by_one(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    single = save(store, b"alone", at=500.0)
    pack = profiles_at(1000.0, 1002.0, 1001.0)

    store.save_many(pack)

    newest, oldest = pack[1][0], pack[0][0]
    assert files(tmp_path) == [f"{single}.profile", f"{newest}+{oldest}+3.profiles"]
    assert store_ids(tmp_path) == [pack[1][0], pack[2][0], pack[0][0], single]
    for profile_id, meta, data in pack:
        assert store.load(profile_id) == (meta, data)
    assert store.load(single) == ({"id": single}, b"alone")
    assert store.load(new_profile_id(1001.5)) is None  # within the pack's range, not in it


def test_packs_count_each_profile_and_are_pruned_whole_never_the_one_just_saved(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path, max_profiles=4, prune_every=1)
    store.save_many(profiles_at(1000.0, 1001.0, 1002.0))
    store.save_many(profiles_at(2000.0, 2001.0))  # 5 profiles: the older pack goes whole

    assert len(store.recent()) == 2 and len(files(tmp_path)) == 1
    big = profiles_at(3000.0, 3001.0, 3002.0, 3003.0, 3004.0)
    store.save_many(big)  # alone above the bound

    assert store_ids(tmp_path) == sorted((profile_id for profile_id, _, _ in big), reverse=True)
    assert len(files(tmp_path)) == 1


def test_a_requested_profile_handed_over_with_others_gets_a_file_of_its_own(
    tmp_path: Path,
) -> None:
    """The writer hands over all it has queued at once: a token request's profile among
    sampled ones. In their pack, it would go whole with them."""
    store = DirectoryStore(tmp_path, max_profiles=3, prune_every=1)
    queued = profiles_at(*(1000.0 + n for n in range(5)))
    requested = queued[2]
    requested[1]["trigger"] = "token"
    store.save_many(queued)
    latest = profiles_at(2000.0, 2001.0)
    store.save_many(latest)  # 7 profiles: the older pack of four goes

    assert store_ids(tmp_path) == [latest[1][0], latest[0][0], requested[0]]
    assert f"{requested[0]}.requested.profile" in files(tmp_path)
    assert store.load(requested[0]) == (requested[1], requested[2])


@pytest.mark.parametrize(
    "index", [b"", b"[[", b"null", b'[["x"]]', b"[[1, {}, 4]]", b'[["x", null, 4]]', b"\xff"]
)
def test_a_pack_whose_index_is_damaged_is_left_out(tmp_path: Path, index: bytes) -> None:
    store = DirectoryStore(tmp_path)
    kept = save(store, at=1.0)
    pack = profiles_at(2.0, 3.0)
    store.save_many(pack)
    [pack_file] = tmp_path.glob("*.profiles")

    pack_file.write_bytes(index + b"\ndata")

    assert store_ids(tmp_path) == [kept]
    assert store.load(pack[0][0]) is None


def test_files_that_only_look_like_packs_are_neither_read_nor_pruned(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_profiles=1, prune_every=1)
    newest, oldest = new_profile_id(2.0), new_profile_id(1.0)
    lookalikes = [
        f"{newest}+{oldest}+0.profiles",
        f"{newest}+..+1.profiles",
        "a+b+1.profiles",
        f"{newest}+{oldest}+1.requested.profiles",
        f"{newest}.requested.requested.profile",
        f"{newest}.requested",
        f"{newest}.profile.requested",
    ]
    for name in lookalikes:
        (tmp_path / name).write_bytes(b"[]\n")

    store.save_many(profiles_at(3.0, 4.0))

    assert len(store.recent()) == 2
    assert set(lookalikes) <= set(files(tmp_path))


def test_a_dangling_link_by_a_profiles_name_is_pruned_as_a_file(tmp_path: Path) -> None:
    """Pruning stat'ed what each name points at: a link to nothing was never counted nor
    removed, and a link to a large file counted as that file."""
    store = DirectoryStore(tmp_path, max_profiles=2, prune_every=1)
    dangling = tmp_path / f"{new_profile_id(1.0)}.profile"
    dangling.symlink_to(tmp_path / "nothing")

    kept = [save(store, at=2.0), save(store, at=3.0)]

    assert files(tmp_path) == sorted(f"{profile_id}.profile" for profile_id in kept)
