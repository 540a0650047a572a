"""One run of the freezer: render what changed, keep what did not, swap atomically.

    with SiteBuild(app, "var/build") as build:   # lock, read the data and the live build
        for page in build.pending:                # only pages whose inputs changed
            build.render(page)                    # as the live app answers its URL
        report = build.commit()                   # the new build goes live in one rename

Leaving the block without ``commit()`` (an error, Ctrl-C) leaves the live
build as it was. ``freeze(app, dest)`` does all three.

A page is rendered in a request context for its URL, so its bytes are the
body the live app returns there. The home page, the 404 page and static
files go through the app's own request handling (``before_request`` hooks,
the view, error handlers, ``after_request``), as with Frozen-Flask's test
client minus the WSGI plumbing around it. Episode pages are rendered with
the renderer their view registered (``site.render_episode_page``), and the
catalogue and the feed are composed as their views compose them, from their
registered ``webapp.listing.Listing`` (its frame and fragments), from
episodes this build reads at once: only those with a page or a fragment
to render. A fragment of an unchanged episode is copied from the last
build's file, and so are the gzip chunks around it (``chunked_gzip``): an
edit of one episode renders and compresses a few kilobytes, not the 1.2 MB
feed. All of a build shares one app context, and so one database session.
A write to the database during a build is picked up by the next one (its
revisions differ).

Gzip runs on a second thread (zlib releases the GIL), so page *n* is
compressed while page *n + 1* renders; the files are written on the main
thread, where a blocking write does not then wait for the GIL.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import EnvironBuilder

from ..db import get_session, queries
from ..db.backends import DatabaseUnavailable
from ..models import Episode, EpisodeRevision
from . import chunked_gzip
from .output import BuildTrees, FileRecord, FreezeError, content_digest
from .site import Page, episodes_map, plan_pages, redirect_rules, render_episode_page, site_data

#: An episode's fragment in a listing: (number, revision).
#: (number, revision); the revision is None for an episode written while the triggers were off.
FragmentKey = tuple[int, int | None]
#: A compressed file and, if it is in chunks, their layout (JSON).
Compressed = tuple[bytes, str | None]


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
        site = (
            f"{self.pages} pages, {self.bytes / 1e6:.2f} MB"
            f" ({self.compressed_bytes / 1e6:.2f} MB gzipped)"
        )
        if not self.changed and not self.rendered:
            return (
                f"Nothing changed: {site} in {self.destination} are up to date"
                f" ({self.seconds:.2f} s)."
            )
        return (
            f"Froze {site} into {self.destination}: rendered {len(self.rendered)}"
            f" in {self.seconds:.2f} s ({self.pages_per_second:.0f} pages/s);"
            f" {len(self.changed)} files changed, {len(self.removed)} removed."
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
        #: Each .gz file to write: its path, its inputs, and how to get its bytes.
        self._compressed: list[tuple[str, str, Callable[[], Compressed]]] = []
        self._mtime_ns = time.time_ns()
        #: The episodes this build renders a page or a fragment of, by number.
        self._episodes: dict[int, Episode] = {}
        #: Fragments of the live build's listings this build may copy, by page URL.
        self._kept: dict[str, dict[FragmentKey, bytes]] = {}
        #: Files whose modification time is not the build's (see webapp.listing.Listing).
        self._mtimes: dict[str, int] = {}

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
            # Made from the data at each build, written only when they change.
            self._generated = {
                "nginx/episodes.map": episodes_map(self._data),
                "nginx/redirects.conf": redirect_rules(self.app, self.pages),
            }
            self._plan_changes()
            self._mtimes = {
                path: int(page.listing.modified(self._data.state).timestamp()) * 1_000_000_000
                for page in self.pages
                if page.listing is not None and page.listing.modified is not None
                for path in page.files
            }
            self._episodes = self._read_episodes()
            # One WSGI environ, its path swapped per page: building a fresh one
            # per request (as the test client does) costs more than most pages.
            self._environ = EnvironBuilder(self.app).get_environ()
            self._gzipper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freeze-gzip")
            stack.callback(self._gzipper.shutdown, cancel_futures=True)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._exit_stack.close()

    def _plan_changes(self) -> None:
        live = self.trees.live_records
        self.pending = [page for page in self.pages if _stale(page, live)]
        keep = {path for page in self.pages for path in page.files} | self._generated.keys()
        self.up_to_date = (
            not self.pending
            and keep == live.keys()
            and all(
                self._unchanged(path, content_digest(data))
                for path, data in self._generated.items()
            )
        )
        if not self.up_to_date:
            self.trees.prepare(keep)

    def _read_episodes(self) -> dict[int, Episode]:
        """The episodes of the pending pages and fragments, in one read."""
        numbers = {page.number for page in self.pending if page.number is not None}
        for page in self.pending:
            if page.listing is not None:
                kept = self._kept[page.url] = self._kept_fragments(page)
                numbers.update(
                    episode.number for episode in self._data.episodes if _key(episode) not in kept
                )
        if not numbers:
            return {}
        session = get_session()
        if len(numbers) > len(self._data.episodes) // 2:
            episodes = queries.all_episodes(session)  # one pass over the table beats a lookup each
        else:
            episodes = queries.episodes_by_number(session, numbers)
        return {episode.number: episode for episode in episodes}

    def _kept_fragments(self, page: Page) -> dict[FragmentKey, bytes]:
        """The fragments of ``page``'s file in the live build, if the same code made them.

        Nothing is kept unless the layout tiles the file exactly: a state file
        that does not describe the file is not trusted.
        """

        def fragments(layout: dict[str, Any], data: bytes) -> dict[FragmentKey, bytes]:
            if layout["code"] != self._data.code:
                return {}
            kept, offset = {}, layout["before"]
            for number, revision, length in layout["items"]:
                kept[number, revision] = data[offset : offset + length]
                offset += length
            return kept if offset + layout["after"] == len(data) else {}

        return self._from_live(page.path, fragments)

    def _kept_chunks(self, path: str) -> dict[str, bytes]:
        """The deflated chunks of the live build's ``path``, by digest."""
        return self._from_live(
            path, lambda layout, data: chunked_gzip.GzipChunks(data, layout["chunks"]).reusable()
        )

    def _from_live(
        self, path: str, parts: Callable[[dict[str, Any], bytes], dict[Any, bytes]]
    ) -> dict[Any, bytes]:
        """``parts(layout, data)`` of the live build's ``path``; nothing if either is missing or
        they disagree."""
        record = self.trees.live_records.get(path)
        if record is None or not record.layout:
            return {}
        data = self.trees.read_live(path)
        if data is None:
            return {}
        try:
            return parts(json.loads(record.layout), data)
        except (KeyError, TypeError, ValueError):
            return {}

    def render(self, page: Page) -> None:
        """Render ``page`` as the live app answers a GET of its URL, and store it."""
        environ = {**self._environ, "PATH_INFO": _wsgi_path(page.url)}
        with _freeze_errors(self.trees.destination), self.app.request_context(environ):
            if page.number is None and page.listing is None:
                self._store(page, self._dispatch(page))
            else:
                try:
                    if page.listing is not None:
                        body, layout, chunks = self._compose(page)
                    else:
                        assert page.number is not None, "a page without a listing is an episode"
                        episode = self._episode(page.number)
                        body, layout, chunks = render_episode_page(self.app, episode), None, None
                except FreezeError:
                    raise
                except Exception as error:  # a template error: say which page
                    raise _page_error(page, f"{type(error).__name__}: {error}") from error
                self._store(
                    page, body, layout, chunks
                )  # outside: a full disk is not the page's fault
            self._rendered.append(page.url)

    def _episode(self, number: int) -> Episode:
        try:
            return self._episodes[number]
        except KeyError:
            raise FreezeError(
                f"episode {number} was deleted while the build ran; the live build is unchanged:"
                " freeze again"
            ) from None

    def _compose(self, page: Page) -> tuple[bytes, str, list[chunked_gzip.Chunk]]:
        """A listing's body as its view composes it, from kept and newly rendered fragments.

        Returns the body, its layout (for the next build) and its gzip chunks.
        """
        listing = page.listing
        assert listing is not None
        kept = self._kept.get(page.url, {})
        entries = self._data.episodes
        keys = [_key(episode) for episode in entries]
        missing = [entry for entry, key in zip(entries, keys, strict=True) if key not in kept]
        rendered = listing.fragments.numbered(
            missing, lambda numbers: [self._episode(number) for number in numbers]
        )
        by_number = {number: item.encode() for number, item in rendered}
        fragments = kept | {_key(entry): by_number[entry.number] for entry in missing}
        before, after = (part.encode() for part in listing.frame(entries, self._data.state))
        chunks = listing.chunks(before, ((key[0], fragments[key]) for key in keys), after)
        layout = {
            "code": self._data.code,
            "before": len(before),
            "items": [
                [number, revision, len(fragments[number, revision])] for number, revision in keys
            ],
            "after": len(after),
        }
        return b"".join(chunks), _json(layout), chunked_gzip.split(chunks)

    def _dispatch(self, page: Page) -> bytes:
        self._errors.error = None
        with self.app.full_dispatch_request() as response:
            if response.status_code != page.status:
                error = self._errors.error
                cause = f" ({type(error).__name__}: {error})" if error else ""
                raise _page_error(page, f"the app answered {response.status}{cause}")
            response.direct_passthrough = False  # static files: read the file as a server would
            return response.get_data()

    def commit(self) -> BuildReport:
        """Write the .gz files, add what did not change, and make the build live."""
        if self.up_to_date:
            return self._report(self.trees.live_records, removed=[])
        with _freeze_errors(self.trees.destination):
            # The .gz files last: the gzip thread works on while this carries the rest.
            rendered = set(self._rendered)
            for page in self.pages:
                if page.url not in rendered:
                    for path in page.files:
                        self._carry(path, page.inputs)
            for path, data in self._generated.items():
                content = content_digest(data)
                if self._unchanged(path, content):
                    self._carry(path, content)
                else:
                    self._write(path, data, content, content)
            for path, inputs, compressed in self._compressed:
                data, layout = compressed()
                self._write(path, data, inputs, content_digest(data), layout)
            removed = sorted(self.trees.live_records.keys() - self._records.keys())
            report = self._report(self._records, removed)
            self.trees.commit(self._records, self._manifest(report))
        return report

    def _store(
        self,
        page: Page,
        body: bytes,
        layout: str | None = None,
        chunks: list[chunked_gzip.Chunk] | None = None,
    ) -> None:
        # A listing's chunk digests cover every byte already: no second pass over 1.2 MB.
        content = content_digest(body) if chunks is None else chunked_gzip.digest_of(chunks)
        live = self.trees.live_records
        if self._unchanged(page.path, content) and all(path in live for path in page.files):
            # Same bytes: keep the file, and so its mtime and nginx's ETag.
            self._carry(page.path, page.inputs, layout)
            for path in page.files[1:]:
                self._carry(path, page.inputs)
            return
        self._write(page.path, body, page.inputs, content, layout)
        for path in page.files[1:]:
            if chunks is None:
                self._compressed.append(
                    (path, page.inputs, self._gzipper.submit(_gzip_whole, body).result)
                )
            else:
                self._compressed.append((path, page.inputs, self._gzip_chunks(path, chunks)))

    def _gzip_chunks(self, path: str, chunks: list[chunked_gzip.Chunk]) -> Callable[[], Compressed]:
        """Deflate the chunks the live ``path`` lacks, on the gzip thread; the rest is copied."""
        kept = self._kept_chunks(path)
        deflating = [
            kept.get(chunk.digest) or self._gzipper.submit(chunked_gzip.deflate, chunk)
            for chunk in chunks
        ]

        def assemble() -> Compressed:
            deflated = [part if isinstance(part, bytes) else part.result() for part in deflating]
            compressed = chunked_gzip.assemble(chunks, deflated)
            return compressed.data, _json({"chunks": compressed.chunks})

        return assemble

    def _unchanged(self, path: str, content: str) -> bool:
        record = self.trees.live_records.get(path)
        return record is not None and record.content == content

    def _carry(self, path: str, inputs: str, layout: str | None = None) -> None:
        record = self.trees.live_records[path]
        if record.inputs != inputs:
            record = record._replace(inputs=inputs)
        if layout is not None and record.layout != layout:
            record = record._replace(layout=layout)  # same bytes, from other revisions
        self.trees.carry(path, record)
        self._records[path] = record

    def _write(
        self, path: str, data: bytes, inputs: str, content: str, layout: str | None = None
    ) -> None:
        # A page and its .gz get the same mtime, as nginx's gzip_static expects.
        mtime_ns = self._mtimes.get(path, self._mtime_ns)
        self._records[path] = self.trees.write(path, data, mtime_ns, inputs, content, layout)
        self._written.append(path)

    def _report(self, records: dict[str, FileRecord], removed: list[str]) -> BuildReport:
        return BuildReport(
            destination=self.trees.destination,
            pages=len(self.pages),
            rendered=tuple(self._rendered),
            changed=tuple(sorted([*self._written, *removed])),
            removed=tuple(removed),
            bytes=sum(records[page.path].size for page in self.pages),
            compressed_bytes=sum(
                records[path].size for page in self.pages for path in page.files[1:]
            ),
            seconds=time.perf_counter() - self._started,
        )

    def _manifest(self, report: BuildReport) -> dict[str, object]:
        return {
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "changed": list(report.changed),
            "removed": list(report.removed),
            "pages": report.pages,
            "rendered": list(report.rendered),
            "bytes": report.bytes,
            "compressed_bytes": report.compressed_bytes,
            "seconds": round(report.seconds, 3),
            "site_version": self._data.state.version,
        }


def _page_error(page: Page, reason: str) -> FreezeError:
    return FreezeError(f"cannot freeze {page.url}: {reason}; the live build is unchanged")


def _wsgi_path(url: str) -> str:
    """A URL path as WSGI's PATH_INFO holds it: its UTF-8 bytes, decoded as latin-1 (PEP 3333)."""
    return url.encode().decode("latin-1")


def _gzip_whole(data: bytes) -> Compressed:
    # mtime=0 and no file name in the header: the same page always compresses
    # to the same bytes.
    return gzip.compress(data, compresslevel=9, mtime=0), None


def _json(layout: dict[str, Any]) -> str:
    return json.dumps(layout, separators=(",", ":"))


def _key(episode: EpisodeRevision) -> FragmentKey:
    return episode.number, episode.revision


def _stale(page: Page, live: dict[str, FileRecord]) -> bool:
    """True if the live build lacks ``page`` or made it from other inputs."""
    return any(path not in live or live[path].inputs != page.inputs for path in page.files)


def freeze(app: Flask, destination: str | PathLike[str] | None = None) -> BuildReport:
    """Build the site into ``destination``, rendering only what changed. Raises FreezeError."""
    with SiteBuild(app, destination) as build:
        for page in build.pending:
            build.render(page)
        return build.commit()
