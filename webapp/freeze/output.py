"""Where builds live on disk, and how a new one goes live in one atomic rename.

    <dest>                 a symlink to one of the two trees: what nginx serves
    <dest>.builds/a, b     the two build trees
    <dest>.builds/.lock    held while a freeze runs

A build is written into the tree that is *not* live (the spare), and goes
live when ``<dest>`` is replaced by a symlink to it (``rename(2)``: a request
sees the old build or the new one, never a mix, never nothing). The old tree
stays whole until the next build, so a request that resolved it just before
the swap still finds its file.

The spare is first made a copy of the live build (``prepare``): hard links,
so its files keep their inode and modification time (nginx's ETag and
Last-Modified); then the build writes the files that changed, each a new
file (never written through a link), and removes those that went. Because
the spare was the live build one build ago, making it a copy costs a link
per file changed in the last build, not one per file of the site: the live
build's state says which files those are, and which state file the spare
had then, so the spare's own is not read.

Each tree records its build in ``.freeze-state.json``, written last: the
files it keeps records of (:class:`FileRecord`), what the build chose to
keep about the site (``site``, opaque here), the files it changed, and a
:class:`TreeDigest` of every file of the tree (path, size, mtime), kept up to
date file by file as the build writes and removes, so a copy of the tree
(``pull.py``) can be checked whole without the state listing each file. A
tree without it was left unfinished; a state of another format is not
trusted, and the next build starts from nothing.

    with BuildTrees(Path("var/build")) as trees:   # locks, reads the live build
        trees.prepare()                            # the spare: a copy of the live build
        record = trees.write("index.html", body, mtime_ns, inputs, content_digest)
        trees.remove("episodes/7/old-slug.html")
        trees.commit({"index.html": record, ...}, site, manifest)   # the swap
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any, NamedTuple

STATE_FILE = ".freeze-state.json"
#: Bumped when the state's meaning changes: a state of another format is not trusted.
STATE_FORMAT = 2
MANIFEST_FILE = "manifest.json"
#: What a build writes for nginx, which nginx reads only when it starts or reloads: the
#: episode redirects (a map, site.episodes_map) and the app's other redirects to frozen pages.
EPISODE_MAP = "nginx/episodes.map"
REDIRECTS = "nginx/redirects.conf"
NGINX_INCLUDES = (EPISODE_MAP, REDIRECTS)
TREE_NAMES = ("a", "b")
#: The folder beside a destination that holds its trees: ``<dest>.builds``.
TREES_SUFFIX = ".builds"


def trees_root(destination: Path) -> Path:
    """``<dest>.builds``: where the build trees of ``destination`` (a symlink to one) live."""
    return destination.with_name(destination.name + TREES_SUFFIX)


class FreezeError(Exception):
    """The build cannot go on; the message says why. The live build is left as it was."""


def describe_os_error(destination: Path, error: OSError) -> str:
    """What a build could not do on disk, which file, and what to do: for the person running it.

    The common causes each have a fix of their own: a full disk, a read-only
    mount, and files of the build owned by another user (a freeze once run as
    root; ``fs.protected_hardlinks`` then refuses the links a build makes).
    """
    files = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    what = f"{error.strerror or error}{f' ({files})' if files else ''}"
    root = trees_root(destination)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = (
            f"free space on the file system of {root} (a build needs room for every file it"
            " changes: all of them after a change of code or settings), then freeze again"
        )
    elif error.errno == errno.EROFS:
        advice = (
            f"{root} is on a read-only file system: remount it read-write, or choose another --dest"
        )
    elif error.errno in (errno.EACCES, errno.EPERM):
        me = _user_name(os.geteuid())
        owner = _owner(Path(error.filename)) if error.filename else None
        whose = f"{owner[0]} is owned by {owner[1]}, and " if owner is not None else ""
        advice = (
            f"{whose}this freeze runs as {me}: run it as the user that owns the build,"
            f" or give the build to {me} (`chown -R {me} {root}`)"
        )
    else:
        return what
    return f"{what}; {advice}"


def _owner(path: Path) -> tuple[Path, str] | None:
    """``path`` or its nearest existing parent, and the name of its owner."""
    for candidate in (path, *path.parents):
        try:
            return candidate, _user_name(os.lstat(candidate).st_uid)
        except OSError:
            continue
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def content_digest(data: bytes) -> str:
    """A digest of a file's bytes (128 bits of SHA-256).

    SHA-256 rather than BLAKE2: with the SHA extensions of current x86 and
    ARM CPUs it hashes about twice as fast as BLAKE2b, and a
    build hashes every byte it writes.
    """
    return hashlib.sha256(data).hexdigest()[:32]


class FileRecord(NamedTuple):
    """One file of a build: the digest of the inputs it was made from, and of its bytes.

    A tuple, so the state file (JSON) holds each as an array. For the
    catalogue and the feed, ``content`` digests their chunks' digests, which
    cover every byte (see splice.py).
    """

    inputs: str
    content: str
    mtime_ns: int
    size: int
    #: How the file is made of parts the next build may reuse, as JSON (see
    #: build.py), if it is: decoded only by a build that reuses them.
    layout: str | None = None


class TreeDigest(NamedTuple):
    """How many files a tree holds, and the sum of a digest of each one's path, size and mtime.

    A sum (modulo 2**128), so a build updates it per file it writes or removes, never
    reading the rest of the tree, and a copy of the tree adds it up in any order.
    """

    files: int = 0
    total: int = 0

    def plus(self, path: str, size: int, mtime_ns: int, sign: int = 1) -> TreeDigest:
        entry = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).digest()[:16]
        total = (self.total + sign * int.from_bytes(entry, "little")) % (1 << 128)
        return TreeDigest(self.files + sign, total)

    def minus(self, path: str, size: int, mtime_ns: int) -> TreeDigest:
        return self.plus(path, size, mtime_ns, -1)

    def to_json(self) -> list[int | str]:
        return [self.files, f"{self.total:032x}"]

    @classmethod
    def from_json(cls, value: Any) -> TreeDigest:
        """Raises ValueError (or TypeError) for anything but a digest."""
        files, total = value
        return cls(int(files), int(total, 16))

    @classmethod
    def of(cls, tree: Path) -> TreeDigest:
        """The digest of every file of ``tree`` but its state file and manifest (read whole).

        Raises :class:`FreezeError` for anything but files and folders: a build writes
        nothing else, and a symlink would let nginx serve what lies outside the tree (one
        to a folder is never walked into, so it would pass uncounted).
        """
        digest = cls()
        for directory, folders, names in os.walk(tree):
            for name in folders:
                if os.path.islink(os.path.join(directory, name)):
                    raise FreezeError(_not_a_file(tree, os.path.join(directory, name)))
            for name in names:
                full = os.path.join(directory, name)
                stat = os.lstat(full)
                if not S_ISREG(stat.st_mode):
                    raise FreezeError(_not_a_file(tree, full))
                path = os.path.normpath(os.path.relpath(full, tree))
                if path not in (STATE_FILE, MANIFEST_FILE):
                    digest = digest.plus(path, stat.st_size, stat.st_mtime_ns)
        return digest


def _not_a_file(tree: Path, full: str) -> str:
    path = os.path.normpath(os.path.relpath(full, tree))
    return f"{path} in {tree} is a symlink or a special file: a build holds only files and folders"


class Range(NamedTuple):
    """Bytes of a file of the live build, by offset and size."""

    offset: int
    size: int


class BuildTrees:
    """The live build tree and the spare one of a destination; see the module docstring."""

    def __init__(self, destination: Path) -> None:
        self.destination = Path(os.path.abspath(destination))
        if not self.destination.name:  # "/": no symlink can take its place
            raise FreezeError(
                f"{self.destination} cannot be a build: a build is a symlink a freeze swaps;"
                " choose a --dest like /srv/podcast/var/build"
            )
        self.root = trees_root(self.destination)
        self.live: Path | None = None
        self.spare = self.root / TREE_NAMES[0]
        #: The live build's records of its files (empty before the first build).
        self.live_records: dict[str, FileRecord] = {}
        #: What the live build kept about the site (see commit); None if nothing is trusted.
        self.live_site: dict[str, Any] | None = None
        self._live_tree = TreeDigest()
        #: The spare tree's files, as they are now (see TreeDigest).
        self._tree = TreeDigest()
        #: The files the live build changed (wrote or removed), and the state
        #: file the spare had when it was made (see _spare_is_previous).
        self._live_changed: list[str] = []
        self._live_previous: list[int] | None = None
        self._written: set[str] = set()
        self._removed: set[str] = set()
        self._open: dict[str, int] = {}
        self._lock: int | None = None
        #: True once the spare is being made into this build, until it goes live: a build
        #: that fails meanwhile removes it (see __exit__).
        self._preparing = False
        # Per-file work uses plain strings: pathlib costs more than the syscalls here.
        self._made_dirs: set[str] = set()

    def __enter__(self) -> BuildTrees:
        target, own = self._destination_link()
        build = _build_holding(self.destination)
        if build is not None and own is None:
            # Before anything is made beside it (a <tree>.builds in the build's own folder).
            # "Move it away" or "remove the link", said of other paths, would take the live
            # site from nginx here.
            how = f"links to {target}," if target is not None else "is"
            raise FreezeError(
                f"{self.destination} {how} a tree of the build at {build};"
                f" use {build} (FREEZE_DIR or --dest), the symlink a freeze swaps"
            )
        if (enclosing := _build_enclosing(self.destination)) is not None:
            raise FreezeError(
                f"{self.destination} is inside the build at {enclosing}: a freeze there would"
                f" write into the site nginx serves; choose a --dest outside {enclosing} and"
                f" {trees_root(enclosing)}"
            )
        # Refused before anything is made beside it; checked again under the lock.
        self._find_live()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise FreezeError(
                f"cannot write to {self.destination}: {describe_os_error(self.destination, error)}"
            ) from None
        try:
            self._lock_and_find_live()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, exc_type: object = None, *exc_info: object) -> None:
        for descriptor in self._open.values():
            os.close(descriptor)
        self._open.clear()
        if exc_type is not None and self._preparing and self._lock is not None:
            # Unfinished, it cannot serve as the next build's spare (its state is gone), and
            # after a full disk it would keep the disk full until a build that changes
            # something: nginx's logs and the database may share that disk.
            shutil.rmtree(self.spare, ignore_errors=True)
            self._preparing = False
        if self._lock is not None:
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def _lock_and_find_live(self) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
        except BlockingIOError:
            raise FreezeError(
                f"another freeze or pull is writing to {self.destination}; try again when it"
                " ends (a pull that was killed ends when the rsync it started does)"
            ) from None
        self.live = self._find_live()
        if self.live is not None:
            state = _read_state(self.live)
            if state is not None:  # else: rebuild everything, trust nothing of it
                self.live_records, self.live_site = state["files"], state["site"]
                self._live_changed, self._live_previous = state["changed"], state["previous"]
                self._live_tree = state["tree"]
            self.spare = self.root / TREE_NAMES[self.live.name == TREE_NAMES[0]]

    def _destination_link(self) -> tuple[str | None, Path | None]:
        """Where the destination links (None if it is no symlink), and the tree of ours that
        is (None if it is not one)."""
        if not self.destination.is_symlink():
            return None, None
        target = os.readlink(self.destination)
        ours = (self.root / name for name in TREE_NAMES if target == f"{self.root.name}/{name}")
        return target, next(ours, None)

    def _find_live(self) -> Path | None:
        target, own = self._destination_link()
        if own is not None:
            return own
        if target is not None:
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

    @property
    def lock_descriptor(self) -> int:
        """The descriptor whose lock says a build is writing: a process that inherits it
        (``pass_fds``) holds the lock for as long as it runs, whatever becomes of this one."""
        if self._lock is None:
            raise RuntimeError("the trees are not locked: use BuildTrees as a context manager")
        return self._lock

    @property
    def trusted(self) -> bool:
        """True if there is a live build and its state can be believed."""
        return self.live_site is not None

    def prepare(self) -> None:
        """Make the spare tree a copy of the live build (empty if none is trusted), unfinished."""
        self._preparing = True
        self._tree = self._live_tree if self.trusted else TreeDigest()
        if self.trusted and self._spare_is_previous():
            # The build before the live one, untouched since: it differs from
            # the live build in the files the live build changed, no others.
            (self.spare / STATE_FILE).unlink()
            for path in self._live_changed:
                if os.path.lexists(os.path.join(self.live, path)):  # type: ignore[arg-type]
                    self._link(path)
                else:
                    self._remove(path)
            return
        if self.spare.exists():
            shutil.rmtree(self.spare)
        self.spare.mkdir()
        if self.trusted:
            assert self.live is not None
            for directory, _, files in os.walk(self.live):
                relative = os.path.relpath(directory, self.live)
                for name in files:
                    path = os.path.normpath(os.path.join(relative, name))
                    if path not in (STATE_FILE, MANIFEST_FILE):
                        self._link(path)

    def _spare_is_previous(self) -> bool:
        """True if the spare's state file is the one the live build recorded as before it."""
        spare = _state_file_id(self.spare)
        return spare is not None and spare == self._live_previous

    def _link(self, path: str) -> None:
        """Give the spare the live build's ``path`` (a hard link: same inode, same mtime)."""
        target = self._target(path)
        _unlink(target)
        os.link(os.path.join(self.live, path), target)  # type: ignore[arg-type]

    def read_live(self, path: str) -> bytes | None:
        """The live build's ``path``; None if there is none (or nothing of it is trusted)."""
        if self.live is None or not self.trusted:
            return None
        try:
            with open(os.path.join(self.live, path), "rb") as file:
                return file.read()
        except OSError:
            return None

    def live_reader(self, path: str, record: FileRecord) -> Callable[[int, int], bytes] | None:
        """``read(offset, size)`` of the live build's ``path``; None if it is not the file
        ``record`` describes (or there is none).

        No build writes a file in place (see ``write``), so its size and mtime
        are enough to know it holds the bytes recorded. The file stays open
        until the build ends: ``write`` copies Range pieces from it.
        """
        if self.live is None or not self.trusted:
            return None
        descriptor = self._open.get(path)
        if descriptor is None:
            try:
                descriptor = os.open(os.path.join(self.live, path), os.O_RDONLY)
            except OSError:
                return None
            self._open[path] = descriptor
        stat = os.fstat(descriptor)
        if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
            return None
        return lambda offset, size: os.pread(descriptor, size, offset)

    def write(
        self,
        path: str,
        data: bytes | Sequence[bytes | Range],
        mtime_ns: int,
        inputs: str = "",
        content: str = "",
        layout: str | None = None,
    ) -> FileRecord:
        """Write a new file into the spare tree: ``data``, or the pieces of it.

        A :class:`Range` piece is copied from the live build's ``path`` by the
        kernel (``copy_file_range``), without passing through Python.
        """
        target = self._target(path)
        # It may be a hard link to the live build's file: never write through
        # it ("x" below makes sure of that).
        self._forget(path, target)
        _unlink(target)
        self._written.add(path)
        self._removed.discard(path)
        pieces = [data] if isinstance(data, bytes) else data
        size = 0
        try:
            with open(target, "xb") as file:
                for piece in pieces:
                    if isinstance(piece, Range):
                        file.flush()
                        self._copy(path, file.fileno(), piece, size)
                        file.seek(size + piece.size)
                        size += piece.size
                    else:
                        file.write(piece)
                        size += len(piece)
                file.flush()
                os.utime(file.fileno(), ns=(mtime_ns, mtime_ns))
        except OSError as error:
            error.filename = error.filename or target  # a full disk names no file
            raise
        self._tree = self._tree.plus(path, size, mtime_ns)
        return FileRecord(inputs, content, mtime_ns, size, layout)

    def _forget(self, path: str, target: str) -> None:
        """Take the spare's ``path`` (at ``target``), if it has one, out of its digest."""
        try:
            stat = os.lstat(target)
        except FileNotFoundError:
            return
        self._tree = self._tree.minus(path, stat.st_size, stat.st_mtime_ns)

    def _copy(self, path: str, target: int, piece: Range, at: int) -> None:
        """Copy ``piece`` of the live build's ``path`` to offset ``at`` of ``target``.

        A piece at the same offset in both files (the part of a listing before
        its first change) is copied in three calls, its whole blocks in the
        middle: copy_file_range clones block-aligned ranges on file systems
        with reflinks (XFS, btrfs), so those blocks are then shared with the
        live file rather than copied, and never written through (copy on
        write). Elsewhere (ext4) the three calls copy as one would.
        """
        if piece.offset == at:
            block = os.fstat(target).st_blksize
            head = -piece.offset % block
            body = (piece.size - head) // block * block
            if body > 0:
                for offset, size in (
                    (0, head),
                    (head, body),
                    (head + body, piece.size - head - body),
                ):
                    self._copy_range(path, target, Range(piece.offset + offset, size), at + offset)
                return
        self._copy_range(path, target, piece, at)

    def _copy_range(self, path: str, target: int, piece: Range, at: int) -> None:
        source = self._open[path]  # opened by live_reader, which made the plan
        copied = 0
        while copied < piece.size:
            try:
                done = os.copy_file_range(
                    source, target, piece.size - copied, piece.offset + copied, at + copied
                )
            except OSError:  # a file system or kernel that cannot: copy through memory
                done = os.pwrite(
                    target,
                    os.pread(source, min(piece.size - copied, 1 << 20), piece.offset + copied),
                    at + copied,
                )
            if done == 0:
                raise OSError(f"{path} of the live build ended before {piece.offset + copied}")
            copied += done

    def remove(self, path: str) -> None:
        """Remove ``path`` from the spare tree (it is a copy of the live one: see prepare)."""
        if path in self._written:
            self._written.discard(path)
        self._removed.add(path)
        self._forget(path, os.path.join(self.spare, path))
        self._remove(path)

    def size(self, path: str) -> int:
        """The size of the spare tree's ``path``; 0 if it has none."""
        if not self.trusted:
            return 0  # the spare was made empty
        try:
            return os.stat(os.path.join(self.spare, path)).st_size
        except FileNotFoundError:
            return 0

    def live_files(self, directory: str) -> list[str]:
        """The files of ``directory`` in the live build (none if it is not trusted), as paths."""
        if self.live is None or not self.trusted:
            return []
        try:
            return [os.path.join(directory, name) for name in os.listdir(self.live / directory)]
        except FileNotFoundError:
            return []

    def listdir(self, directory: str) -> list[str]:
        """The files of ``directory`` in the spare tree, as paths; none if it has none, or if
        the spare was made empty (it then holds only what this build wrote)."""
        if not self.trusted:
            return []
        try:
            return [os.path.join(directory, name) for name in os.listdir(self.spare / directory)]
        except FileNotFoundError:
            return []

    def commit(
        self,
        records: Mapping[str, FileRecord],
        site: Mapping[str, Any],
        manifest: Mapping[str, Any],
    ) -> list[str]:
        """Write the manifest and the state of the spare tree, then make it the live build.

        Returns what the build changed: the files written or removed.
        """
        self._replace_file(MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        changed = self.changed
        # None if there is no live build or its state is gone: the next build
        # then makes the spare anew.
        previous = _state_file_id(self.live) if self.live is not None and self.trusted else None
        state = {
            "format": STATE_FORMAT,
            "files": records,
            "site": site,
            "changed": changed,
            "previous": previous,
            "tree": self._tree.to_json(),
        }
        self._replace_file(STATE_FILE, json.dumps(state, separators=(",", ":")).encode())
        self.go_live()
        return changed

    def go_live(self) -> None:
        """Make the spare tree the live build: ``<dest>`` becomes a symlink to it in one rename."""
        link = self.destination.with_name(f".{self.destination.name}.swap")
        link.unlink(missing_ok=True)
        os.symlink(f"{self.root.name}/{self.spare.name}", link)
        if self.live is None and self.destination.is_dir():
            self.destination.rmdir()  # the empty directory from before the first build
        os.replace(link, self.destination)
        self._preparing = False

    @property
    def removed(self) -> list[str]:
        """The files this build removed (so far)."""
        return sorted(self._removed)

    @property
    def changed(self) -> list[str]:
        """The files this build wrote or removed (so far)."""
        return sorted(self._written | self._removed)

    def _replace_file(self, name: str, data: bytes) -> None:
        target = self.spare / name
        target.unlink(missing_ok=True)
        try:
            target.write_bytes(data)
        except OSError as error:
            error.filename = error.filename or str(target)
            raise

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
            self._made_dirs.discard(str(directory))


def _build_holding(path: Path) -> Path | None:
    """The destination (``<dest>``) whose build tree ``path`` is, or resolves to; None if none."""
    tree = Path(os.path.realpath(path))
    return _destination_of(tree.parent) if tree.name in TREE_NAMES else None


def _build_enclosing(path: Path) -> Path | None:
    """The destination (``<dest>``) whose trees folder (``<dest>.builds``) ``path`` would be
    made in, at any depth, through any symlink; None if none. ``path`` itself may be a build's
    symlink: only its parent is resolved."""
    parent = Path(os.path.realpath(path.parent))
    for folder in (parent, *parent.parents):
        if (destination := _destination_of(folder)) is not None:
            return destination
    return None


def _destination_of(folder: Path) -> Path | None:
    """The build's symlink (``<dest>``) whose trees folder is ``folder``; None if it is none."""
    if not folder.name.endswith(TREES_SUFFIX):
        return None
    destination = folder.with_name(folder.name.removesuffix(TREES_SUFFIX))
    return destination if destination.is_symlink() else None


def _read_state(tree: Path) -> dict[str, Any] | None:
    """The state of a finished tree of this format, its records made; None for any other."""
    try:
        state = json.loads((tree / STATE_FILE).read_bytes())
        if state["format"] != STATE_FORMAT or not isinstance(state["site"], dict):
            return None
        state["files"] = {path: FileRecord(*fields) for path, fields in state["files"].items()}
        state["tree"] = TreeDigest.from_json(state["tree"])
        if not isinstance(state["changed"], list):
            return None
        return state
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_state(tree: Path) -> tuple[dict[str, FileRecord], TreeDigest] | None:
    """The files a finished tree's state file records, and the digest of all its files;
    None for an unfinished or foreign tree."""
    state = _read_state(tree)
    return (state["files"], state["tree"]) if state is not None else None


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
