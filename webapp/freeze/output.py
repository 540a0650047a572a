"""Where builds live on disk, and how a new one goes live in one atomic rename.

    <dest>                 a symlink to one of the two trees: what nginx serves
    <dest>.builds/a, b     the two build trees
    <dest>.builds/.lock    held while a freeze runs

A build is written into the tree that is *not* live (the spare), and goes
live when ``<dest>`` is replaced by a symlink to it (``rename(2)``: a request
sees the old build or the new one, never a mix, never nothing). The old tree
stays whole until the next build, so a request that resolved it just before
the swap still finds its file.

The spare is brought up to date by hard-linking the live build's unchanged
files into it, so they keep their inode and modification time (nginx's ETag
and Last-Modified), and only files that changed are written. Each tree records
its files in ``.freeze-state.json``, written last; a tree without it was left
unfinished and is rebuilt from scratch. Because the spare was the live build
one build ago, bringing it up to date costs a link per file changed in the
last two builds, not one per file of the site. Which files those are, the
live build's state says (the files it changed, and which state file the
spare had then), so the spare's own state is read only if it has been
touched since.

    with BuildTrees(Path("var/build")) as trees:   # locks, reads the live build
        trees.prepare(keep={"index.html", "404.html", ...})   # the spare keeps only these
        record = trees.write("index.html", body, mtime_ns, inputs, content_digest)
        trees.carry("404.html", trees.live_records["404.html"])
        trees.commit({"index.html": record, ...}, manifest)   # the swap
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple

STATE_FILE = ".freeze-state.json"
MANIFEST_FILE = "manifest.json"
TREE_NAMES = ("a", "b")


class FreezeError(Exception):
    """The build cannot go on; the message says why. The live build is left as it was."""


def content_digest(data: bytes) -> str:
    """A digest of a file's bytes (128 bits of SHA-256).

    SHA-256 rather than BLAKE2: with the SHA extensions of current x86 and
    ARM CPUs it hashes 1.7 GB/s here against BLAKE2b's 0.74, and a build
    hashes every byte it writes.
    """
    return hashlib.sha256(data).hexdigest()[:32]


class FileRecord(NamedTuple):
    """One file of a build: the digest of the inputs it was made from, and of its bytes.

    A tuple, so the state file (JSON) holds each as an array, and the
    thousand-odd records of a site cost little to read and write. For the
    catalogue and the feed, ``content`` digests their chunks' digests, which
    cover every byte (see build.py).
    """

    inputs: str
    content: str
    mtime_ns: int
    size: int
    #: How the file is made of parts the next build may reuse, as JSON (see
    #: build.py), if it is: decoded only by a build that reuses them.
    layout: str | None = None


class BuildTrees:
    """The live build tree and the spare one of a destination; see the module docstring."""

    def __init__(self, destination: Path) -> None:
        self.destination = Path(os.path.abspath(destination))
        self.root = self.destination.with_name(f"{self.destination.name}.builds")
        self.live: Path | None = None
        self.spare = self.root / TREE_NAMES[0]
        #: The files of the live build (empty before the first build).
        self.live_records: dict[str, FileRecord] = {}
        #: The files the live build changed (wrote or removed), and the state
        #: file the spare had when it was made (see _spare_is_previous).
        self._live_changed: set[str] = set()
        self._live_previous: list[int] | None = None
        #: Files the spare already holds in the live build's version.
        self._spare_same: set[str] = set()
        self._written: set[str] = set()
        self._lock: int | None = None
        # Per-file work uses plain strings: pathlib costs more than the syscalls here.
        self._made_dirs: set[str] = set()

    def __enter__(self) -> BuildTrees:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise FreezeError(
                f"cannot write to {self.destination}: {error.strerror} ({error.filename})"
            ) from None
        try:
            self._lock_and_find_live()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def _lock_and_find_live(self) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
        except BlockingIOError:
            raise FreezeError(
                f"another freeze is writing to {self.destination}; try again when it ends"
            ) from None
        self.live = self._find_live()
        if self.live is not None:
            state = _read_state(self.live)
            records = _records(state["files"]) if state is not None else None
            if records is not None:  # else: rebuild everything, trust nothing of it
                self.live_records = records
                changed, previous = state.get("changed"), state.get("previous")  # type: ignore[union-attr]
                if isinstance(changed, list) and isinstance(previous, list):
                    self._live_changed, self._live_previous = set(changed), previous
            self.spare = self.root / TREE_NAMES[self.live.name == TREE_NAMES[0]]

    def _find_live(self) -> Path | None:
        if self.destination.is_symlink():
            target = os.readlink(self.destination)
            for name in TREE_NAMES:
                if target == f"{self.root.name}/{name}":
                    return self.root / name
            raise FreezeError(
                f"{self.destination} links to {target}, not to a build of `flask freeze`;"
                " remove the link or choose another --dest"
            )
        if self.destination.is_dir() and not any(self.destination.iterdir()):
            return None  # an empty directory, e.g. made by a deploy: replaced at the swap
        if self.destination.exists():
            raise FreezeError(
                f"{self.destination} exists and is not a build of `flask freeze`;"
                " move it away or choose another --dest"
            )
        return None

    def prepare(self, keep: Collection[str]) -> None:
        """Make the spare tree hold only files in ``keep``, and mark it unfinished."""
        live = self.live_records
        if self._spare_is_previous():
            # The build before the live one, untouched since: it differs from
            # the live build in the files the live build changed, no others.
            present = live.keys() | self._live_changed
            self._spare_same = live.keys() - self._live_changed
        else:
            state = _read_state(self.spare)
            spare = _records(state["files"]) if state is not None else None
            if spare is None:  # unfinished, or of another version
                if self.spare.exists():
                    shutil.rmtree(self.spare)
                spare = {}
            present = set(spare)
            self._spare_same = {
                path
                for path, record in spare.items()
                if path in live
                and (record.content, record.mtime_ns) == (live[path].content, live[path].mtime_ns)
            }
        (self.spare / STATE_FILE).unlink(missing_ok=True)
        for path in present - set(keep):
            self._remove(path)
        self.spare.mkdir(exist_ok=True)

    def _spare_is_previous(self) -> bool:
        """True if the spare's state file is the one the live build recorded as its predecessor."""
        spare = _state_file_id(self.spare)
        return spare is not None and spare == self._live_previous

    def carry(self, path: str, record: FileRecord) -> None:
        """Give the spare the live build's ``path`` (a hard link: same inode, same mtime)."""
        if path in self._spare_same:
            return  # the spare has this version already: same bytes, same mtime
        target = self._target(path)
        _unlink(target)
        os.link(os.path.join(self.live, path), target)  # type: ignore[arg-type]

    def read_live(self, path: str) -> bytes | None:
        """The live build's ``path``, if its size and mtime are still those of its record.

        No build writes a file in place (see ``write``), so that is enough to
        know the bytes are the ones recorded, without reading them twice.
        """
        record = self.live_records.get(path)
        if record is None or self.live is None:
            return None
        try:
            with open(os.path.join(self.live, path), "rb") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
                    return None
                return file.read()
        except OSError:
            return None

    def write(
        self,
        path: str,
        data: bytes,
        mtime_ns: int,
        inputs: str,
        content: str,
        layout: str | None = None,
    ) -> FileRecord:
        """Write a new file into the spare tree."""
        target = self._target(path)
        # It may be a hard link to the live build's file: never write through
        # it ("x" below makes sure of that).
        _unlink(target)
        self._written.add(path)
        with open(target, "xb") as file:
            file.write(data)
            file.flush()
            os.utime(file.fileno(), ns=(mtime_ns, mtime_ns))
        return FileRecord(inputs, content, mtime_ns, len(data), layout)

    def commit(self, records: Mapping[str, FileRecord], manifest: Mapping[str, Any]) -> None:
        """Write the manifest and the state of the spare tree, then make it the live build."""
        self._replace_file(MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        changed = self._written | (self.live_records.keys() - records.keys())
        # None if there is no live build or its state is gone: the next build
        # then reads the spare's own.
        previous = _state_file_id(self.live) if self.live is not None else None
        state = {"files": records, "changed": sorted(changed), "previous": previous}
        self._replace_file(STATE_FILE, json.dumps(state, separators=(",", ":")).encode())
        self.go_live()

    def go_live(self) -> None:
        """Make the spare tree the live build: ``<dest>`` becomes a symlink to it in one rename."""
        link = self.destination.with_name(f".{self.destination.name}.swap")
        link.unlink(missing_ok=True)
        os.symlink(f"{self.root.name}/{self.spare.name}", link)
        if self.live is None and self.destination.is_dir():
            self.destination.rmdir()  # the empty directory from before the first build
        os.replace(link, self.destination)

    def _replace_file(self, name: str, data: bytes) -> None:
        target = self.spare / name
        target.unlink(missing_ok=True)
        target.write_bytes(data)

    def _target(self, path: str) -> str:
        """The spare tree's file for ``path``, its directory made."""
        target = os.path.join(self.spare, path)
        directory = os.path.dirname(target)
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        return target

    def _remove(self, path: str) -> None:
        target = self.spare / path
        target.unlink(missing_ok=True)
        # Drop directories left empty (a deleted episode's), up to the tree.
        for directory in target.parents:
            if directory == self.spare:
                break
            try:
                directory.rmdir()
            except OSError:
                break


def _read_state(tree: Path) -> dict[str, Any] | None:
    """A finished tree's state (its files, each as a FileRecord's fields); None if unfinished."""
    try:
        state = json.loads((tree / STATE_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("files"), dict) else None


def read_records(tree: Path) -> dict[str, FileRecord] | None:
    """The files a finished tree's state file lists; None for an unfinished or foreign one."""
    state = _read_state(tree)
    return _records(state["files"]) if state is not None else None


def _state_file_id(tree: Path) -> list[int] | None:
    """Which state file ``tree`` holds (inode, mtime, size); None if it has none."""
    try:
        stat = os.stat(tree / STATE_FILE)
    except OSError:
        return None
    return [stat.st_ino, stat.st_mtime_ns, stat.st_size]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _records(files: dict[str, list[Any]]) -> dict[str, FileRecord] | None:
    """The records of a state file's files; None if they are not records of this version."""
    try:
        return {path: FileRecord(*fields) for path, fields in files.items()}
    except TypeError:
        return None
