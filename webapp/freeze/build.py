"""One run of the freezer: render what changed, keep what did not, swap atomically.

    with SiteBuild(app, "var/build") as build:   # lock, read the data and the live build
        for page in build.pending:                # only pages whose inputs changed
            build.render(page)                    # through the live app's own views
        report = build.commit()                   # the new build goes live in one rename

Leaving the block without ``commit()`` (an error, Ctrl-C) leaves the live
build as it was. ``freeze(app, dest)`` does all three.

Pages are rendered by the test client Frozen-Flask uses, so a frozen page is
the body the live app returns for its URL. All requests of a build share one
app context, and so one database session: no connection hand-off or commit
per page. A write to the database during a build is picked up by the next
one (its inputs will differ).

Compressing and writing happen on a second thread: zlib and file I/O release
the GIL, so page *n* is gzipped and written while page *n + 1* renders.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

from flask import Flask

from ..database import DatabaseUnavailable
from .output import BuildTrees, FileRecord, FreezeError
from .site import Page, episodes_map, plan_pages, site_data

#: The nginx include with the episode redirects (see site.episodes_map).
MAP_PATH = "nginx/episodes.map"


def content_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class BuildReport:
    """What a build did. ``changed`` is what a deploy would sync (written or removed)."""

    destination: Path
    pages: int
    rendered: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    bytes: int
    compressed_bytes: int
    seconds: float

    @property
    def pages_per_second(self) -> float:
        return len(self.rendered) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        site = f"{self.pages} pages, {self.bytes / 1e6:.2f} MB ({self.compressed_bytes / 1e6:.2f} MB gzipped)"
        if not self.changed and not self.rendered:
            return f"Nothing changed: {site} in {self.destination} are up to date ({self.seconds:.2f} s)."
        return (
            f"Froze {site} into {self.destination}: rendered {len(self.rendered)} in {self.seconds:.2f} s"
            f" ({self.pages_per_second:.0f} pages/s); {len(self.changed)} files changed,"
            f" {len(self.removed)} removed."
        )


class _LastError(logging.Handler):
    """Keeps the last exception the app logs: its 500 handler logs each one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.error = record.exc_info[1]


@contextmanager
def _freeze_errors(destination: Path) -> Iterator[None]:
    """Database and file-system failures, as messages for the person running the freeze."""
    try:
        yield
    except DatabaseUnavailable as error:
        raise FreezeError(f"{error}; the live build is unchanged") from None
    except OSError as error:
        raise FreezeError(f"cannot write the build for {destination}: {error}") from None


class SiteBuild:
    """A build of the site into ``destination`` (default: the FREEZE_DIR setting)."""

    def __init__(self, app: Flask, destination: str | PathLike[str] | None = None) -> None:
        self.app = app
        self.trees = BuildTrees(Path(destination or app.config["FREEZE_DIR"]))
        #: Every page of the site, and those this build must render.
        self.pages: list[Page] = []
        self.pending: list[Page] = []
        self.up_to_date = False
        self._records: dict[str, FileRecord] = {}
        self._written: list[str] = []
        self._rendered: list[str] = []
        self._stores: list[Future[None]] = []
        self._mtime_ns = time.time_ns()

    def __enter__(self) -> SiteBuild:
        self._started = time.perf_counter()
        with ExitStack() as stack, _freeze_errors(self.trees.destination):
            stack.enter_context(self.trees)
            stack.enter_context(self.app.app_context())
            self._errors = _LastError()
            self.app.logger.addHandler(self._errors)
            stack.callback(self.app.logger.removeHandler, self._errors)
            self.pages = plan_pages(self.app)
            self._data = site_data()
            self._map = episodes_map(self._data)
            self._plan_changes()
            self._client = self.app.test_client()
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freeze-writer")
            stack.callback(self._writer.shutdown, cancel_futures=True)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._exit_stack.close()

    def _plan_changes(self) -> None:
        live = self.trees.live_records
        self.pending = [page for page in self.pages if _stale(page, live)]
        keep = {path for page in self.pages for path in page.files} | {MAP_PATH}
        map_record = live.get(MAP_PATH)
        self.up_to_date = (
            not self.pending
            and keep == live.keys()
            and map_record is not None
            and map_record.content == content_digest(self._map)
        )
        if not self.up_to_date:
            self.trees.prepare(keep)

    def render(self, page: Page) -> None:
        """Render ``page`` through the app, then store it on the writer thread."""
        self._errors.error = None
        with _freeze_errors(self.trees.destination), self._client.get(page.url) as response:
            if response.status_code != page.status:
                error = self._errors.error
                cause = f" ({type(error).__name__}: {error})" if error else ""
                raise FreezeError(
                    f"{page.url} answered {response.status} instead of {page.status}{cause};"
                    " the live build is unchanged"
                )
            body = response.get_data()
        self._rendered.append(page.url)
        self._stores.append(self._writer.submit(self._store, page, body))

    def commit(self) -> BuildReport:
        """Wait for the writes, add what did not change, and make the build live."""
        with _freeze_errors(self.trees.destination):
            for store in self._stores:
                store.result()
            if self.up_to_date:
                return self._report(self.trees.live_records, removed=[])
            rendered = set(self._rendered)
            for page in self.pages:
                if page.url not in rendered:
                    for path in page.files:
                        self._carry(path, page.inputs)
            map_content = content_digest(self._map)
            if self._unchanged(MAP_PATH, map_content):
                self._carry(MAP_PATH, map_content)
            else:
                self._write(MAP_PATH, self._map, map_content, map_content)
            removed = sorted(self.trees.live_records.keys() - self._records.keys())
            report = self._report(self._records, removed)
            self.trees.commit(self._records, self._manifest(report))
        return report

    def _store(self, page: Page, body: bytes) -> None:
        content = content_digest(body)
        live = self.trees.live_records
        if self._unchanged(page.path, content) and all(path in live for path in page.files):
            # Same bytes: keep the file, and so its mtime and nginx's ETag.
            for path in page.files:
                self._carry(path, page.inputs)
            return
        self._write(page.path, body, page.inputs, content)
        for path in page.files[1:]:
            # mtime=0 and no file name in the header: the same page always
            # compresses to the same bytes.
            compressed = gzip.compress(body, compresslevel=9, mtime=0)
            self._write(path, compressed, page.inputs, content_digest(compressed))

    def _unchanged(self, path: str, content: str) -> bool:
        record = self.trees.live_records.get(path)
        return record is not None and record.content == content

    def _carry(self, path: str, inputs: str) -> None:
        record = self.trees.live_records[path]
        if record.inputs != inputs:
            record = replace(record, inputs=inputs)
        self.trees.carry(path, record)
        self._records[path] = record

    def _write(self, path: str, data: bytes, inputs: str, content: str) -> None:
        # A page and its .gz get the same mtime, as nginx's gzip_static expects.
        self._records[path] = self.trees.write(path, data, self._mtime_ns, inputs, content)
        self._written.append(path)

    def _report(self, records: dict[str, FileRecord], removed: list[str]) -> BuildReport:
        return BuildReport(
            destination=self.trees.destination,
            pages=len(self.pages),
            rendered=tuple(self._rendered),
            changed=tuple(sorted([*self._written, *removed])),
            removed=tuple(removed),
            bytes=sum(records[page.path].size for page in self.pages),
            compressed_bytes=sum(records[path].size for page in self.pages for path in page.files[1:]),
            seconds=time.perf_counter() - self._started,
        )

    def _manifest(self, report: BuildReport) -> dict[str, object]:
        return {
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "changed": list(report.changed),
            "removed": list(report.removed),
            "pages": report.pages,
            "rendered": list(report.rendered),
            "bytes": report.bytes,
            "compressed_bytes": report.compressed_bytes,
            "seconds": round(report.seconds, 3),
            "site_version": self._data.state.version,
        }


def _stale(page: Page, live: dict[str, FileRecord]) -> bool:
    """True if the live build lacks ``page`` or made it from other inputs."""
    return any(path not in live or live[path].inputs != page.inputs for path in page.files)


def freeze(app: Flask, destination: str | PathLike[str] | None = None) -> BuildReport:
    """Build the site into ``destination``, rendering only what changed. Raises FreezeError."""
    with SiteBuild(app, destination) as build:
        for page in build.pending:
            build.render(page)
        return build.commit()
