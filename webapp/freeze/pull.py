"""A build frozen on another machine goes live here, whole, in one rename.

    flask --app webapp pull-build podcast@10.0.0.11:/srv/podcast/var/build     # over ssh
    flask --app webapp pull-build rsync://10.0.0.11/podcast/build --dest /srv/podcast/var/build

    report = pull_build("podcast@10.0.0.11:/srv/podcast/var/build", Path("var/build"))

With several app servers, the site is frozen once, on one of them (``flask
freeze``), and each nginx machine pulls that build; nginx never waits for
Python, and every nginx machine serves the same bytes with the same ETags.
The source is the build's ``<dest>`` symlink there, in any form rsync takes.

1. The source's symlink is read first (``rsync --list-only``), and the tree it
   names is copied, not the symlink: a freeze there during the copy makes its
   other tree, and leaves this one alone; a second one rewrites it, and the check
   below refuses the mix.
2. rsync copies that tree into this machine's spare tree, emptied first, under
   the freezer's lock (``output.BuildTrees``), which rsync holds too (a pull killed
   outright leaves its rsync copying, and no second pull joins it). Unchanged files
   (``--checksum``: by content) are hard-linked from the live tree (``--link-dest``),
   never written through: rsync sets times and modes in place on a file the spare
   already holds, so the spare starts empty rather than as the previous build, whose
   files are the live build's. Changed files are written under temporary names and
   renamed, modification times kept, so nginx's ETag and Last-Modified are the source's.
   Only files and folders are copied (no symlinks). The state file comes last, on its
   own: rsync gives a file the mtime it listed and the bytes it reads later, so a
   file a freeze at the source replaced during the copy arrives with the old mtime,
   and only a state file read after it sees the difference.
3. Every file is checked against the build's own state file: the files it
   records (the listings, static files, nginx's maps) by size and modification
   time, and the whole tree by its digest (``output.TreeDigest``: the count of
   files and a sum over each one's path, size and modification time, which the
   build keeps up to date as it writes): nothing missing, nothing extra, nothing
   half-copied, no symlink. A build that does not match is not used.
4. ``<dest>`` is replaced by a symlink to the spare tree in one ``rename(2)``,
   as ``flask freeze`` does: a request gets the old build or the new one.

Then nginx needs a reload only if ``nginx/episodes.map`` or
``nginx/redirects.conf`` changed (``PullReport.nginx_reload``), as after a freeze.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .output import (
    NGINX_INCLUDES,
    STATE_FILE,
    TREE_NAMES,
    TREES_SUFFIX,
    BuildTrees,
    FreezeError,
    TreeDigest,
    describe_os_error,
    read_state,
)

#: Seconds rsync may go without any data before it gives up.
RSYNC_TIMEOUT = 60
#: What to do about a copy that is not its build: the usual cause is a freeze at the source
#: (two, in fact) while the copy ran, which rewrites the tree being copied.
PULL_AGAIN = (
    "; the live build here is unchanged: pull again (a freeze at the source during the copy"
    " rewrites the tree being copied)"
)


@dataclass(frozen=True)
class PullReport:
    """What a pull made live: the source's tree, how many files, and whether nginx must reload."""

    source_tree: str
    files: int
    nginx_reload: bool


def pull_build(source: str, destination: Path, *, rsync: str | None = None) -> PullReport:
    """Copy the live build at ``source`` into ``destination``'s spare tree and make it live.

    Raises :class:`FreezeError` (the live build left as it was) if rsync fails or the copy
    does not match the build's state file.
    """
    rsync = rsync or shutil.which("rsync")
    if rsync is None:
        raise FreezeError("rsync is not installed: it copies the build")
    tree = _source_tree(rsync, source)
    with BuildTrees(destination) as trees:
        try:
            if trees.spare.exists():
                shutil.rmtree(trees.spare)
            trees.spare.mkdir()
        except OSError as error:
            raise FreezeError(
                f"cannot empty {trees.spare}: {describe_os_error(destination, error)}"
            ) from None
        link_dest = [f"--link-dest={trees.live}"] if trees.live is not None else []
        _rsync(
            rsync,
            trees,
            tree,
            "--recursive",
            "--no-links",
            # Compare contents, not sizes and times: rsync's quick check would take a live
            # file of the right size and second for the source's (two builds in one second).
            "--checksum",
            f"--exclude=/{STATE_FILE}",
            *link_dest,
            f"{tree}/",
            f"{trees.spare}/",
        )
        _rsync(rsync, trees, tree, f"{tree}/{STATE_FILE}", f"{trees.spare}/{STATE_FILE}")
        files = _check_against_state(trees.spare)
        reload = trees.live is None or any(
            not _same_file(trees.live / name, trees.spare / name) for name in NGINX_INCLUDES
        )
        trees.go_live()
    return PullReport(source_tree=tree, files=files, nginx_reload=reload)


def _rsync(rsync: str, trees: BuildTrees, tree: str, *arguments: str) -> None:
    """Run rsync into ``trees.spare``, holding their lock; raises FreezeError if it fails."""
    result = subprocess.run(
        [rsync, "--perms", "--times", f"--timeout={RSYNC_TIMEOUT}", *arguments],
        capture_output=True,
        text=True,
        check=False,
        pass_fds=(trees.lock_descriptor,),
    )
    if result.returncode == 0:
        return
    failed = f"rsync from {tree} failed: {result.stderr.strip()[-1000:]}"
    if _DISK_FULL.search(result.stderr):
        # Kept, the partial copy would hold the disk full (nginx's logs share it).
        shutil.rmtree(trees.spare, ignore_errors=True)
        raise FreezeError(
            f"{failed}; the live build here is unchanged, and the partial copy was"
            f" removed: free space on the file system of {trees.root}, then pull again"
        )
    if result.returncode in (_PARTIAL, _VANISHED):
        raise FreezeError(failed + PULL_AGAIN)
    raise FreezeError(failed)


#: How rsync reports a full disk or quota, in any language: strerror's errno after it.
_DISK_FULL = re.compile(r"\((?:28|122)\)$", re.MULTILINE)
#: rsync's exit codes for files it could not copy (the state file a freeze there is
#: rewriting, say) and for files that vanished while it copied.
_PARTIAL, _VANISHED = 23, 24


def _source_tree(rsync: str, source: str) -> str:
    """The tree the source's ``<dest>`` symlink names, as an rsync source."""
    source = source.rstrip("/")
    parent, _, name = source.rpartition("/")
    if not parent or not name:
        raise FreezeError(
            "give the full path of the build's symlink, e.g. host:/srv/podcast/var/build,"
            f" not {source!r}"
        )
    result = subprocess.run(
        [rsync, "--links", "--list-only", f"--timeout={RSYNC_TIMEOUT}", source],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise FreezeError(f"cannot read {source}: {result.stderr.strip()[-1000:]}")
    _, arrow, target = result.stdout.strip().partition(" -> ")
    # A daemon without chroot shows it as /rsyncd-munged/<target>: its last two parts count.
    parts = target.split("/")[-2:]
    if not arrow or parts[0] != f"{name}{TREES_SUFFIX}" or parts[1] not in TREE_NAMES:
        raise FreezeError(f"{source} is not the symlink of a `flask freeze` build")
    return f"{parent}/{parts[0]}/{parts[1]}"


def _check_against_state(tree: Path) -> int:
    """The number of files in ``tree``, if they are exactly those its state file describes."""
    state = read_state(tree)
    if state is None:
        raise FreezeError(
            f"the copy in {tree} has no readable state file: not a finished build{PULL_AGAIN}"
        )
    records, digest = state
    for path, record in records.items():
        try:
            stat = os.lstat(tree / path)
        except FileNotFoundError:
            raise FreezeError(
                f"the copy in {tree} differs from its build: {path} is missing{PULL_AGAIN}"
            ) from None
        if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
            raise FreezeError(f"the copy in {tree} has another {path} than its build{PULL_AGAIN}")
    try:
        found = TreeDigest.of(tree)
    except FreezeError as error:
        raise FreezeError(f"the copy is not its build: {error}{PULL_AGAIN}") from None
    if found != digest:
        raise FreezeError(
            f"the copy in {tree} differs from its build: {found.files} files where the build"
            f" has {digest.files}, or another path, size or modification time among them"
            f"{PULL_AGAIN}"
        )
    return found.files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except FileNotFoundError:
        return a.exists() == b.exists()
