"""`flask pull-build`: a build frozen on one machine goes live on another, whole, in one rename.

The source here is a local path (rsync treats host:path and rsync:// the same way);
tests/multihost pulls over the network from an app host into the nginx host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import SMALL_SEED, make_app, require_binary
from webapp.db import get_database
from webapp.db.seed import seed
from webapp.freeze import FreezeError, freeze, pull_build
from webapp.freeze.output import NGINX_INCLUDES


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
