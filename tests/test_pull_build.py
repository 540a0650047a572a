"""`flask pull-build`: a build frozen on one machine goes live on another, whole, in one rename.

The source here is a local path (rsync treats host:path and rsync:// the same way);
tests/multihost pulls over the network from an app host into the nginx host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import SMALL_SEED, make_app, require_binary
from webapp.db import get_database
from webapp.db.seed import seed
from webapp.freeze import FreezeError, freeze, pull_build
from webapp.freeze.output import NGINX_INCLUDES, STATE_FILE, TreeDigest


@pytest.fixture(autouse=True)
def rsync() -> str:
    return require_binary("rsync")


def tree_of(dest: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the live build: its bytes and mtime (nginx's ETag and Last-Modified)."""
    root = dest.resolve()
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file()
    }


def inodes(dest: Path) -> dict[str, int]:
    root = dest.resolve()
    return {str(p.relative_to(root)): p.stat().st_ino for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = make_app(f"sqlite:///{tmp_path}/source.sqlite3", tmp_path / "source")
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    return app


@pytest.fixture
def source(app: Flask, tmp_path: Path) -> Path:
    """The app server's build: frozen once."""
    build = tmp_path / "app1" / "build"
    freeze(app, build)
    return build


def retitle(app: Flask, number: int, title: str) -> None:
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = %s WHERE number = %s", (title, number))


def test_the_pulled_build_is_the_source_build_with_its_mtimes(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "nginx" / "build"

    report = pull_build(str(source), dest)

    assert tree_of(dest) == tree_of(source)
    assert os.readlink(dest) in ("build.builds/a", "build.builds/b")
    assert report.source_tree == f"{source.parent}/{os.readlink(source)}"
    assert report.nginx_reload  # the first build: nginx has no map yet


def test_a_second_pull_links_what_did_not_change_and_keeps_the_old_tree_whole(
    app: Flask, source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    old_tree, old_files, old_inodes = dest.resolve(), tree_of(dest), inodes(dest)
    retitle(app, 3, "A new title for three")
    freeze(app, source)

    report = pull_build(str(source), dest)

    new_files = tree_of(dest)
    assert new_files == tree_of(source) and dest.resolve() != old_tree
    changed = {path for path in new_files if new_files[path] != old_files.get(path)}
    assert "index.html" not in changed and "episodes/rss.xml" in changed
    # Unchanged files are the live build's own inodes, not copies.
    assert all(inodes(dest)[path] == old_inodes[path] for path in new_files.keys() - changed)
    # A request that resolved the old build just before the swap still finds its files.
    assert {str(p.relative_to(old_tree)) for p in old_tree.rglob("*") if p.is_file()} >= set(
        old_files
    )
    assert not report.nginx_reload  # no episode added or moved: the maps are the same


def test_a_file_with_the_sources_size_and_time_but_other_bytes_is_replaced(
    app: Flask, source: Path, tmp_path: Path
) -> None:
    """rsync's quick check compares sizes and whole seconds: a spare tree can hold a stale
    file of the same size from the same second (two builds in one second). The pull compares
    contents instead."""
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    retitle(app, SMALL_SEED, "A title of a new build")
    freeze(app, source)
    spare = dest.with_name("build.builds") / ("b" if os.readlink(dest).endswith("a") else "a")
    new = (source / "index.html").stat()
    stale = spare / "index.html"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"x" * new.st_size)
    os.utime(stale, ns=(new.st_mtime_ns, new.st_mtime_ns))

    pull_build(str(source), dest)

    assert dest.resolve() == spare
    assert (dest / "index.html").read_bytes() == (source / "index.html").read_bytes()


def test_a_new_episode_asks_for_an_nginx_reload(app: Flask, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED + 1)
    freeze(app, source)

    assert pull_build(str(source), dest).nginx_reload


def _episode_page(source: Path, number: int) -> Path:
    return next(path for path in (source / "episodes" / str(number)).glob("*.html"))


#: What a half-synced or tampered source looks like. The state file records no episode page
#: one by one (format 2): those are checked by the tree's digest of paths, sizes and mtimes.
TAMPERED: dict[str, Callable[[Path], object]] = {
    "a file it does not list": lambda source: (source / "episodes" / "intruder.html").write_text(
        "<script>alert(1)</script>"
    ),
    "an episode page missing": lambda source: _episode_page(source, 2).unlink(),
    "an episode page of another time": lambda source: os.utime(
        _episode_page(source, 2), ns=(1_000_000_000, 1_000_000_000)
    ),
    "an episode page of another size": lambda source: _episode_page(source, 2).write_bytes(
        _episode_page(source, 2).read_bytes() + b" "
    ),
    "a recorded file of another size": lambda source: (source / "index.html").write_text("x"),
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_copy_that_does_not_match_its_build_never_goes_live(
    app: Flask, source: Path, tmp_path: Path, tamper: Callable[[Path], object]
) -> None:
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    live_before = os.readlink(dest)
    retitle(app, 3, "Changed")
    freeze(app, source)
    tamper(source.resolve())

    with pytest.raises(FreezeError, match="(differs from|another .* than) its build") as failure:
        pull_build(str(source), dest)

    # What to do: a freeze at the source during the copy is the usual cause.
    assert "the live build here is unchanged: pull again" in str(failure.value)
    assert os.readlink(dest) == live_before
    assert "Changed" not in (dest / "index.html").read_text()


@pytest.mark.parametrize("what", ["a directory", "no such path", "bare"])
def test_a_source_that_is_not_a_builds_symlink_is_refused(
    source: Path, tmp_path: Path, what: str
) -> None:
    bad = {
        "a directory": str(source.resolve()),
        "no such path": str(tmp_path / "nothing" / "build"),
        "bare": "build",
    }[what]
    dest = tmp_path / "nginx" / "build"

    with pytest.raises(FreezeError):
        pull_build(bad, dest)

    assert not dest.exists()


def test_the_command_pulls_into_freeze_dir_and_says_when_nginx_must_reload(
    app: Flask, source: Path, tmp_path: Path
) -> None:
    nginx_host = make_app(f"sqlite:///{tmp_path}/unused.sqlite3", tmp_path / "nginx-host")

    result = nginx_host.test_cli_runner().invoke(args=["pull-build", str(source)])

    assert result.exit_code == 0, result.output
    assert "nginx must reload" in result.output
    assert tree_of(Path(nginx_host.config["FREEZE_DIR"])) == tree_of(source)
    failed = nginx_host.test_cli_runner().invoke(args=["pull-build", str(tmp_path / "x" / "build")])
    assert failed.exit_code != 0 and "cannot read" in failed.output


def test_a_pull_watches_every_file_the_build_writes_for_nginx(source: Path) -> None:
    """What nginx reads only on a reload is named once: a pull that missed one (a copy of the
    template renaming its redirect map, say) would leave nginx on the old one, silently."""
    written = {path.relative_to(source).as_posix() for path in (source / "nginx").iterdir()}

    assert written == set(NGINX_INCLUDES)


def test_a_pull_onto_a_full_disk_says_so_and_takes_its_partial_copy_away(
    source: Path, tmp_path: Path
) -> None:
    """Left there, the partial copy keeps the disk full (nginx's logs share it) until the
    next pull. Played by an rsync that fills what it copies into, as a full disk stops it."""
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    live_before = tree_of(dest)
    full_disk = tmp_path / "rsync-on-a-full-disk"
    full_disk.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--list-only*) exec rsync "$@";; esac\n'
        "for last; do :; done\n"
        'head -c 100000 /dev/zero > "${last}partial.html"\n'
        'echo "rsync: [receiver] write failed on \\"${last}partial.html\\":'
        ' No space left on device (28)" >&2\n'
        "exit 11\n"
    )
    full_disk.chmod(0o755)

    with pytest.raises(FreezeError) as failure:
        pull_build(str(source), dest, rsync=str(full_disk))

    message = str(failure.value)
    assert "No space left on device" in message and "the live build here is unchanged" in message
    assert "free space on the file system of" in message and "then pull again" in message
    builds = dest.with_name(f"{dest.name}.builds")
    assert sorted(path.name for path in builds.iterdir()) == [".lock", os.readlink(dest)[-1]]
    assert tree_of(dest) == live_before
    pull_build(str(source), dest)  # with room again
    assert tree_of(dest) == tree_of(source)


def write_as_a_freeze_would(tree: Path, path: str, data: bytes) -> None:
    """Give the build ``tree`` a new ``path`` as a freeze into it does: a new file (never
    written in place), a new mtime, and its state rewritten with it, last."""
    state = json.loads((tree / STATE_FILE).read_bytes())
    digest = TreeDigest.from_json(state["tree"])
    target = tree / path
    if target.exists():
        old = target.stat()
        digest = digest.minus(path, old.st_size, old.st_mtime_ns)
        target.unlink()
    target.write_bytes(data)
    mtime_ns = time.time_ns()
    os.utime(target, ns=(mtime_ns, mtime_ns))
    state["tree"] = digest.plus(path, len(data), mtime_ns).to_json()
    if path in state["files"]:
        state["files"][path][2:4] = [mtime_ns, len(data)]
    (tree / STATE_FILE).unlink()
    (tree / STATE_FILE).write_text(json.dumps(state))


def slow_rsync(tmp_path: Path) -> str:
    """rsync itself, copying at 256 KiB/s: time to act while it copies."""
    slow = tmp_path / "slow-rsync"
    slow.write_text('#!/bin/sh\nexec rsync --bwlimit=256 "$@"\n')
    slow.chmod(0o755)
    return str(slow)


def wait_until_copying(spare: Path, name: str) -> None:
    """Until rsync writes ``name`` (under its temporary name): its file list is made."""
    deadline = time.monotonic() + 30
    while not (spare.is_dir() and any(p.name.startswith(f".{name}.") for p in spare.iterdir())):
        assert time.monotonic() < deadline, f"rsync never began copying {name}"
        time.sleep(0.01)


#: A file copied before index.html (rsync copies in name order) and slowly: half a second's
#: worth of copying at least, at slow_rsync's rate.
BIG = "aaa-big.bin"


def test_a_file_rewritten_at_the_source_during_the_copy_never_goes_live_with_its_old_time(
    source: Path, tmp_path: Path
) -> None:
    """rsync gives a file the mtime it listed and the bytes it reads later: a file a freeze
    at the source replaced in between arrives with the new build's bytes and the old build's
    mtime. Checked against the state file copied before it, that mix passed, and nginx served
    the new bytes under the old ETag (and this host differed from every other)."""
    tree = source.resolve()
    write_as_a_freeze_would(tree, BIG, os.urandom(512 * 1024))
    dest = tmp_path / "nginx" / "build"
    body = (tree / "index.html").read_bytes()
    edited = body.replace(b"<title>", b"<TITLE>", 1)  # the same size: a typo fixed, say
    assert len(edited) == len(body) != edited

    def freeze_during_the_copy() -> None:
        wait_until_copying(dest.with_name("build.builds") / "a", BIG)
        write_as_a_freeze_would(tree, "index.html", edited)

    freezer = threading.Thread(target=freeze_during_the_copy)
    freezer.start()
    try:
        with pytest.raises(FreezeError, match="pull again"):
            pull_build(str(source), dest, rsync=slow_rsync(tmp_path))
    finally:
        freezer.join()

    assert not dest.exists()
    pull_build(str(source), dest)  # the source is still now
    assert tree_of(dest) == tree_of(source)


def test_a_refused_pull_leaves_the_live_files_times_alone(
    app: Flask, source: Path, tmp_path: Path
) -> None:
    """The spare tree shares the live tree's unchanged files (hard links): rsync used to set
    a source's other mtime on them in place, which changed the live build's ETag and
    Last-Modified, even when the copy was then refused."""
    dest = tmp_path / "nginx" / "build"
    pull_build(str(source), dest)
    retitle(app, 3, "A new title for three")
    freeze(app, source)
    pull_build(str(source), dest)
    live_before = tree_of(dest)
    os.utime(_episode_page(source.resolve(), 2), ns=(1_000_000_000, 1_000_000_000))

    with pytest.raises(FreezeError, match="differs from its build"):
        pull_build(str(source), dest)

    assert tree_of(dest) == live_before


@pytest.mark.parametrize("copies_links", [False, True], ids=["rsync", "an rsync that copies links"])
def test_a_symlink_in_the_source_never_goes_live(
    source: Path, tmp_path: Path, copies_links: bool
) -> None:
    """A build holds files and folders only. A symlink to a folder was not counted in the
    tree's digest, so one at the source (to /etc, say) went live and nginx served this
    machine's files through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("this machine's own")
    os.symlink(outside, source.resolve() / "episodes" / "etc")
    dest = tmp_path / "nginx" / "build"
    rsync = "rsync"
    if copies_links:  # what the check after the copy refuses, whatever copied it
        rsync = str(tmp_path / "rsync-with-links")
        Path(rsync).write_text('#!/bin/sh\nexec rsync "$@" --links\n')
        Path(rsync).chmod(0o755)

    if copies_links:
        with pytest.raises(FreezeError, match="episodes/etc .* is a symlink") as failure:
            pull_build(str(source), dest, rsync=rsync)
        assert "the live build here is unchanged" in str(failure.value)
        assert not dest.exists()
    else:
        pull_build(str(source), dest, rsync=rsync)  # rsync leaves the symlink out
        assert [p for p in dest.resolve().rglob("*") if p.is_symlink()] == []
        assert tree_of(dest) == tree_of(source)
    assert (outside / "secret").read_text() == "this machine's own"


def test_a_pull_killed_mid_copy_holds_the_destination_until_its_rsync_ends(
    source: Path, tmp_path: Path
) -> None:
    """A pull killed outright (SIGKILL, the OOM killer) leaves its rsync copying into the
    spare tree. A second pull used to copy into the same tree at once and make it live,
    with the first one's rsync still writing and deleting in it."""
    write_as_a_freeze_would(source.resolve(), BIG, os.urandom(512 * 1024))
    dest = tmp_path / "nginx" / "build"
    pull = (
        "import sys; from pathlib import Path; from webapp.freeze import pull_build;"
        " pull_build(sys.argv[1], Path(sys.argv[2]), rsync=sys.argv[3])"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", pull, str(source), str(dest), slow_rsync(tmp_path)],
        start_new_session=True,  # its rsync outlives it, as under a shell; killed with it below
    )
    try:
        wait_until_copying(dest.with_name("build.builds") / "a", BIG)
        killed.send_signal(signal.SIGKILL)
        killed.wait()

        with pytest.raises(FreezeError, match="another freeze or pull is writing to"):
            pull_build(str(source), dest)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)

    deadline = time.monotonic() + 10
    while True:  # until the killed rsync's processes are gone, and their lock with them
        try:
            pull_build(str(source), dest)
            break
        except FreezeError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert tree_of(dest) == tree_of(source)
