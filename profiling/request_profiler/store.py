"""Where profiles are kept between the request and the viewer.

A :class:`Store` maps a profile id to its metadata (a JSON-able dict) and its
data (the engine's bytes). :class:`DirectoryStore` is shared by every worker
process and thread that points at the same directory::

    store = DirectoryStore("/var/lib/site/profiles", max_profiles=200, max_bytes=50 * 2**20)
    profile_id = new_profile_id()
    store.save(profile_id, {"id": profile_id, "path": "/"}, data)
    store.recent()[0]["path"]          # "/", newest first
    store.load(profile_id)           # (metadata, data), or None

Ids are ``<UTC time to the microsecond>-<12 random hex digits>``: they sort by
age, never collide across processes in practice, and say nothing about the
request (no path, no query string, no token).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

# [0-9], not \d, which matches every script's digits: a file named with Arabic-Indic ones
# would have been listed.
PROFILE_ID = re.compile(r"[0-9]{8}T[0-9]{12}-[0-9a-f]{12}")
#: ``<id>.profile``, or ``<id>.requested.profile`` for a requested profile (see is_requested).
_PROFILE_NAME = re.compile(rf"({PROFILE_ID.pattern})(\.requested)?\.profile")
_REQUESTED_SUFFIX = ".requested.profile"
#: ``<newest id>+<oldest id>+<count>.profiles``: several profiles saved as one file (a pack),
#: never a requested one (see save_many).
_PACK_NAME = re.compile(rf"({PROFILE_ID.pattern})\+({PROFILE_ID.pattern})\+([1-9][0-9]*)\.profiles")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
#: The longest first line read from a file, per profile it holds: a longer one is damaged. The
#: middleware's metadata stays below it (its SQL list is bounded: sql.MAX_STATEMENTS statements
#: of sql.MAX_STATEMENT_CHARS characters, 12 bytes each at most once escaped for JSON). Unbounded,
#: a file without a line break (50 MB of anything) was read whole by every list.
MAX_META_BYTES = 16 * 2**20


def new_profile_id(now: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{moment:%Y%m%dT%H%M%S%f}-{secrets.token_hex(6)}"


def is_profile_id(text: str) -> bool:
    return PROFILE_ID.fullmatch(text) is not None


def is_requested(meta: Mapping[str, Any]) -> bool:
    """Whether someone asked for this profile (the middleware's ``"trigger": "token"``). Stores
    prune every other profile first: a flood of sampled or slow requests never pushes out the
    one an engineer is about to open."""
    return meta.get("trigger") == "token"


class StoreUnavailable(Exception):
    """A store's service (PostgreSQL) cannot answer now; the message is safe to show."""


class Store(Protocol):
    """What the middleware and the viewer need from a place to keep profiles.

    A store on a network service raises :class:`StoreUnavailable` when it cannot answer.
    """

    def save(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        """Keep one profile; may drop older ones to stay within bounds, requested ones
        (:func:`is_requested`) last."""

    # Optional: ``save_many(profiles)`` keeps several (id, meta, data) at once; the writer
    # uses it when the store has it.

    def recent(self) -> list[dict[str, Any]]:
        """The metadata of the stored profiles, newest first."""

    def load(self, profile_id: str) -> tuple[dict[str, Any], bytes] | None:
        """One profile's metadata and data; None for an unknown or malformed id."""


class DirectoryStore:
    """One file per profile in a directory, bounded by count and total size.

    Each file is written to a temporary name and renamed into place, so a
    reader (another worker's viewer) sees a whole profile or none. Pruning
    takes an ``fcntl`` lock on ``.lock`` so that two processes saving at once
    do not both delete against a stale listing. The profile just saved is
    never pruned by its own save, even when it alone exceeds ``max_bytes``:
    the request that asked for it gets to see it. Requested profiles
    (:func:`is_requested`, each in a file marked ``.requested``) are kept
    first, newest first, then the others: sampled and slow requests only
    push out each other.

    Pruning lists and stats the whole directory, so it runs in amortised
    steps: after every ``prune_every`` saves, or once the saves since the last
    prune add up to a tenth of ``max_bytes``, whichever comes first. Between
    two prunes a process may add up to ``prune_every - 1`` profiles (and a
    tenth of ``max_bytes``) beyond the bounds; each prune brings the directory
    back within them.

    The writer hands over what it has queued at once (:meth:`save_many`): those
    profiles go into one file, a pack, since creating a file costs far more
    kernel CPU than writing a small profile into it (docs/tuning.md). A pack
    counts as its profiles against ``max_profiles`` and is pruned whole (so a
    prune may keep up to one pack fewer than the bound); the viewer reads its
    profiles one by one as any other.

    A damaged file (cut short, overwritten by something else, a first line longer
    than :data:`MAX_META_BYTES` per profile) is left out of :meth:`recent` and not
    found by :meth:`load`; the others read as ever. So is anything by a profile's
    name that is not a file: a symbolic link is not followed, wherever it points.

    The directory is created on the first save, so a misconfigured path fails
    on profiled requests only (the middleware logs that) and not at startup.

    :param directory: where the files go (created with mode 0700 if missing).
    :param max_profiles: the count kept at each prune, newest first.
    :param max_bytes: the total size of the files kept at each prune.
    :param prune_every: saves between two prunes in one process (default: a tenth of
        ``max_profiles``, at least 1; 1 prunes on every save).
    """

    #: Temporary files older than this are left-overs, removed when pruning.
    stale_temp_seconds = 3600

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_profiles: int = 200,
        max_bytes: int = 100 * 2**20,
        prune_every: int | None = None,
    ) -> None:
        if max_profiles < 1 or max_bytes < 1:
            raise ValueError("max_profiles and max_bytes must be positive")
        if prune_every is not None and prune_every < 1:
            raise ValueError("prune_every must be positive")
        self.directory = os.fspath(directory)
        self.max_profiles = max_profiles
        self.max_bytes = max_bytes
        self.prune_every = prune_every or max(1, max_profiles // 10)
        self._unpruned_count = self._unpruned_bytes = 0
        self._counting = threading.Lock()
        # A profile's file never changes once renamed into place: its size, once known
        # (saved here or stat'ed by a prune), is not looked up again.
        self._sizes: dict[str, int] = {}

    def save(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        self._save_one(profile_id, meta, data)

    def _save_one(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        if not is_profile_id(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        # One line of JSON (json.dumps escapes newlines), then the raw data:
        # recent() reads only the first line of each file.
        content = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + data
        self._write(_profile_name(profile_id, is_requested(meta)), profile_id, content, count=1)

    def save_many(self, profiles: Sequence[tuple[str, Mapping[str, Any], bytes]]) -> None:
        """Keep several profiles as one file (a pack): one file created instead of one each.

        The first line lists each profile's id, metadata and data size, newest first; the
        data follow in that order. Packs are pruned whole, so a requested profile gets a
        file of its own: in a pack, the sampled ones beside it would be kept first with it,
        and a pack past ``max_profiles`` would go whole at the next prune, with it.
        """
        packed = []
        for profile in profiles:
            if is_requested(profile[1]):
                self._save_one(*profile)
            else:
                packed.append(profile)
        if len(packed) == 1:
            self._save_one(*packed[0])
        if len(packed) <= 1:
            return
        ordered = sorted(packed, key=lambda profile: profile[0], reverse=True)
        for profile_id, _, _ in ordered:
            if not is_profile_id(profile_id):
                raise ValueError(f"not a profile id: {profile_id!r}")
        newest, oldest = ordered[0][0], ordered[-1][0]
        index = [[profile_id, meta, len(data)] for profile_id, meta, data in ordered]
        content = b"".join(
            [json.dumps(index, separators=(",", ":")).encode(), b"\n", *(p[2] for p in ordered)]
        )
        name = f"{newest}+{oldest}+{len(ordered)}.profiles"
        self._write(name, newest, content, count=len(ordered))

    def _write(self, name: str, temp_id: str, content: bytes, count: int) -> None:
        # The id is unique, so is this name: no random temporary name to find.
        temp_path = os.path.join(self.directory, f".tmp-{temp_id}")
        try:
            fd = os.open(temp_path, _NEW_FILE, 0o600)
        except FileNotFoundError:  # the first save: the directory is made on demand
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(temp_path, _NEW_FILE, 0o600)
        try:
            try:
                written = 0
                while written < len(content):
                    written += os.write(fd, content[written:])
            finally:
                os.close(fd)
            os.replace(temp_path, os.path.join(self.directory, name))
        except BaseException:
            _remove(temp_path)
            raise
        with self._counting:
            self._sizes[name] = len(content)
            self._unpruned_count += count
            self._unpruned_bytes += len(content)
            due = (
                self._unpruned_count >= self.prune_every
                or self._unpruned_bytes * 10 >= self.max_bytes
            )
            if due:
                self._unpruned_count = self._unpruned_bytes = 0
        if due:
            self._prune(keep=name)

    def recent(self) -> list[dict[str, Any]]:
        metas: list[tuple[str, dict[str, Any]]] = []
        for name in self._names():
            single = _PROFILE_NAME.fullmatch(name)
            try:
                with _open(os.path.join(self.directory, name)) as file:
                    first_line = _first_line(file, 1 if single else self._count(name))
            except (OSError, ValueError):
                # Pruned by another process meanwhile, or damaged (cut short, overwritten, a
                # directory or a link by that name): the others are listed all the same.
                continue
            if single:
                if isinstance(first_line, dict):
                    metas.append((single[1], first_line))
            else:
                metas.extend((profile_id, meta) for profile_id, meta, _ in _pack_index(first_line))
        metas.sort(key=lambda found: found[0], reverse=True)
        return [meta for _, meta in metas]

    def load(self, profile_id: str) -> tuple[dict[str, Any], bytes] | None:
        if not is_profile_id(profile_id):
            return None
        for requested in (False, True):
            try:
                path = os.path.join(self.directory, _profile_name(profile_id, requested))
                with _open(path) as file:
                    meta = _first_line(file, 1)
                    if isinstance(meta, dict):
                        return meta, file.read()
            except (OSError, ValueError):  # absent, damaged, or the directory is a file
                pass
        for name in self._names():
            match = _PACK_NAME.fullmatch(name)
            if match is None or not match[2] <= profile_id <= match[1]:
                continue
            try:
                with _open(os.path.join(self.directory, name)) as file:
                    index = _pack_index(_first_line(file, int(match[3])))
                    offset = file.tell()
                    for stored_id, meta, size in index:
                        if stored_id == profile_id:
                            # Within the file: a damaged index may say 10**18, which read()
                            # would allocate at once (a MemoryError) and seek() refuses.
                            end = os.fstat(file.fileno()).st_size
                            file.seek(min(offset, end))
                            return meta, file.read(max(0, min(size, end - offset)))
                        offset += size
            except (OSError, ValueError):  # pruned meanwhile, or damaged
                continue
        return None

    def _names(self) -> list[str]:
        """The stored files (profiles and packs), newest first."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):  # nothing was ever saved there
            return []
        return sorted(filter(self._count, names), reverse=True)

    def _count(self, name: str) -> int:
        """How many profiles the file ``name`` holds; 0 if it is not one of the store's."""
        if _PROFILE_NAME.fullmatch(name):
            return 1
        match = _PACK_NAME.fullmatch(name)
        return 0 if match is None else int(match[3])

    def _prune(self, keep: str) -> None:
        with open(os.path.join(self.directory, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            profiles, temps = [], []
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-"):
                        temps.append(entry)
                    elif self._count(entry.name):
                        profiles.append(entry)
            # Requested first, then the others; newest first in each.
            profiles.sort(
                key=lambda entry: (entry.name.endswith(_REQUESTED_SUFFIX), entry.name), reverse=True
            )
            with self._counting:
                cached = self._sizes.copy()
                known = {entry.name: cached.get(entry.name) for entry in profiles}
            sizes: dict[str, int] = {}
            total = count = 0
            for entry in profiles:
                size = known[entry.name]
                if size is None:  # saved by another process
                    stat = _stat(entry)
                    if stat is None:
                        continue
                    size = stat.st_size
                in_file = self._count(entry.name)
                if entry.name != keep and (
                    count + in_file > self.max_profiles or total + size > self.max_bytes
                ):
                    _remove(entry.path)
                else:
                    count += in_file
                    total += size
                    sizes[entry.name] = size
            with self._counting:
                # What this scan kept, and what was saved meanwhile; the rest is gone.
                sizes.update(
                    (name, size) for name, size in self._sizes.items() if name not in cached
                )
                self._sizes = sizes
            # Left by a worker killed mid-write (uWSGI harakiri); a fresh one is being written.
            cutoff = time.time() - self.stale_temp_seconds
            for entry in temps:
                stat = _stat(entry)
                if stat is not None and stat.st_mtime < cutoff:
                    _remove(entry.path)


def _open(path: str) -> BinaryIO:
    """The file ``path`` for reading, unless it is a symbolic link (an OSError).

    Followed, a link named like a profile would show and serve what it points at: another
    store's profiles, any JSON the server can read. O_NONBLOCK opens a FIFO by that name at
    once (it then reads as empty) instead of waiting for a writer; a regular file reads as ever.
    """
    return open(path, "rb", opener=_no_follow)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def _first_line(file: BinaryIO, profiles: int) -> Any:
    """The JSON value on the first line of a file of ``profiles`` profiles; ValueError if it
    is not JSON or is longer than any the store writes (see MAX_META_BYTES)."""
    limit = MAX_META_BYTES * profiles
    line = file.readline(limit + 1)
    if len(line) > limit:
        raise ValueError("the first line is longer than any metadata")
    return json_value(line)


def json_value(text: str | bytes) -> Any:
    """``json.loads(text)``, with ValueError for JSON nested too deep for it (RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _pack_index(first_line: Any) -> list[tuple[str, dict[str, Any], int]]:
    """A pack's first line as (id, metadata, data size) rows; none if it is not that (damaged)."""
    if not isinstance(first_line, list):
        return []
    rows = []
    for row in first_line:
        match row:
            case [str(profile_id), dict(meta), int(size)] if size >= 0:
                rows.append((profile_id, meta, size))
            case _:
                return []
    return rows


def _profile_name(profile_id: str, requested: bool) -> str:
    """The file of one profile (see _PROFILE_NAME)."""
    return profile_id + (_REQUESTED_SUFFIX if requested else ".profile")


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        # The name's own size: a link is pruned as a file, whatever it points at (or not).
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # removed or renamed by another process meanwhile
        return None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another process removed it first
        os.remove(path)
