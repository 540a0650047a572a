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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

PROFILE_ID = re.compile(r"\d{8}T\d{12}-[0-9a-f]{12}")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def new_profile_id(now: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{moment:%Y%m%dT%H%M%S%f}-{secrets.token_hex(6)}"


def is_profile_id(text: str) -> bool:
    return PROFILE_ID.fullmatch(text) is not None


class StoreUnavailable(Exception):
    """A store's service (PostgreSQL) cannot answer now; the message is safe to show."""


class Store(Protocol):
    """What the middleware and the viewer need from a place to keep profiles.

    A store on a network service raises :class:`StoreUnavailable` when it cannot answer.
    """

    def save(self, profile_id: str, meta: Mapping[str, Any], data: bytes) -> None:
        """Keep one profile; may drop older ones to stay within bounds."""

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
    the request that asked for it gets to see it.

    Pruning lists and stats the whole directory, so it runs in amortised
    steps: after every ``prune_every`` saves, or once the saves since the last
    prune add up to a tenth of ``max_bytes``, whichever comes first. Between
    two prunes a process may add up to ``prune_every - 1`` profiles (and a
    tenth of ``max_bytes``) beyond the bounds; each prune brings the directory
    back within them.

    The directory is created on the first save, so a misconfigured path fails
    on profiled requests only (the middleware logs that) and not at startup.

    :param directory: where the files go (created with mode 0700 if missing).
    :param max_profiles: the count kept at each prune, newest first.
    :param max_bytes: the total size of the files kept at each prune.
    :param prune_every: saves between two prunes in one process (default: a tenth of
        ``max_profiles``, at least 1; 1 prunes on every save).
    """

    suffix = ".profile"
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
        if not is_profile_id(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        # One line of JSON (json.dumps escapes newlines), then the raw data:
        # recent() reads only the first line of each file.
        content = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + data
        # The id is unique, so is this name: no random temporary name to find.
        temp_path = os.path.join(self.directory, f".tmp-{profile_id}")
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
            os.replace(temp_path, self._path(profile_id))
        except BaseException:
            _remove(temp_path)
            raise
        with self._counting:
            self._sizes[profile_id + self.suffix] = len(content)
            self._unpruned_count += 1
            self._unpruned_bytes += len(content)
            due = (
                self._unpruned_count >= self.prune_every
                or self._unpruned_bytes * 10 >= self.max_bytes
            )
            if due:
                self._unpruned_count = self._unpruned_bytes = 0
        if due:
            self._prune(keep=profile_id)

    def recent(self) -> list[dict[str, Any]]:
        metas = []
        for profile_id in self._ids():
            try:
                with open(self._path(profile_id), "rb") as file:
                    metas.append(json.loads(file.readline()))
            except FileNotFoundError:  # pruned by another process meanwhile
                continue
        return metas

    def load(self, profile_id: str) -> tuple[dict[str, Any], bytes] | None:
        if not is_profile_id(profile_id):
            return None
        try:
            with open(self._path(profile_id), "rb") as file:
                meta = json.loads(file.readline())
                return meta, file.read()
        except FileNotFoundError:
            return None

    def _path(self, profile_id: str) -> str:
        return os.path.join(self.directory, profile_id + self.suffix)

    def _ids(self) -> list[str]:
        """The stored ids, newest first."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):  # nothing was ever saved there
            return []
        ids = (name[: -len(self.suffix)] for name in names if name.endswith(self.suffix))
        return sorted((i for i in ids if is_profile_id(i)), reverse=True)

    def _prune(self, keep: str) -> None:
        with open(os.path.join(self.directory, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            profiles, temps = [], []
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-"):
                        temps.append(entry)
                    elif entry.name.endswith(self.suffix) and is_profile_id(
                        entry.name[: -len(self.suffix)]
                    ):
                        profiles.append(entry)
            profiles.sort(key=lambda entry: entry.name, reverse=True)  # newest first
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
                if entry.name != keep + self.suffix and (
                    count >= self.max_profiles or total + size > self.max_bytes
                ):
                    _remove(entry.path)
                else:
                    count += 1
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


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat()
    except FileNotFoundError:  # removed or renamed by another process meanwhile
        return None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another process removed it first
        os.remove(path)
