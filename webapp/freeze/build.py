"""One run of the freezer: render what changed, keep what did not, swap atomically.

    with SiteBuild(app, "var/build") as build:   # lock, read the data and the live build
        for page in build.pending:                # only pages whose inputs changed
            build.render(page)                    # as the live app answers its URL
        report = build.commit()                   # the new build goes live in one rename

Leaving the block without ``commit()`` (an error, Ctrl-C) leaves the live
build as it was. ``freeze(app, dest)`` does all three.

What a build considers is what changed since the live build. Its state
holds every episode's number and revision (``site.EpisodeTable``); the
database's triggers draw a new revision at every change of an episode or its
guests, so comparing the two tables names the episodes published, edited or
deleted since, and only their pages are planned, rendered, written or
removed: an edit costs the same at any size of the site, but for reading
the table (one row of two numbers per episode) and copying the listings. A
change of the code, templates or settings, or a live build whose state
cannot be trusted, makes a full build: every page is rendered (a file whose
bytes did not change is kept, with its inode and mtime).

A page is rendered in a request context for its URL, so its bytes are the
body the live app returns there. The home page, the 404 page and static
files go through the app's own request handling (``before_request`` hooks,
the view, error handlers, ``after_request``), as with Frozen-Flask's test
client minus the WSGI plumbing around it. Episode pages are rendered with
the renderer their view registered (``site.render_episode_page``), from the
episodes this build reads at once. The catalogue and the feed are composed
as their views compose them (their registered ``webapp.listing.Listing``:
its frame and fragments), and written by ``splice``: the fragments of the
changed episodes are rendered, the rest of the live file is copied around
them by the kernel, and so are the gzip chunks that no new byte reaches
(``chunked_gzip``). All of a build shares one app context, and so one
database session. A write to the database during a build is picked up by
the next one (its revisions differ).

Gzip runs on a second thread (zlib releases the GIL), so page *n* is
compressed while page *n + 1* renders; the files are written on the main
thread, where a blocking write does not then wait for the GIL.
"""

from __future__ import annotations

import gzip
import json
import logging
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
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
from ..models import Episode, EpisodeRevision, episode_path
from . import chunked_gzip
from .output import (
    EPISODE_MAP,
    REDIRECTS,
    BuildTrees,
    FileRecord,
    FreezeError,
    Range,
    content_digest,
    describe_os_error,
)
from .site import (
    EpisodeTable,
    Page,
    check_slugs,
    episodes_map,
    plan_pages,
    redirect_rules,
    render_episode_page,
    site_data,
    site_freezer,
)
from .splice import Layout, LiveListing, Splice

#: The .gz of a file still being made: how to get its pieces and layout, when written.
Compressed = Callable[[], tuple[Sequence[bytes | Range], str | None]]


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
    #: The version of the data the build shows (``site_state.version`` when it read it).
    site_version: int

    @property
    def pages_per_second(self) -> float:
        return len(self.rendered) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        site = (
            f"{self.pages} pages, {self.bytes / 1e6:.2f} MB"
            f" ({self.compressed_bytes / 1e6:.2f} MB gzipped)"
        )
        seconds = f"{self.seconds:.2f} s"
        if not self.changed and not self.rendered:
            return f"Nothing changed: {site} in {self.destination} are up to date ({seconds})."
        return (
            f"Froze {site} into {self.destination}: rendered {len(self.rendered)} in {seconds}"
            f" ({self.pages_per_second:.0f} pages/s); {len(self.changed)} files changed,"
            f" {len(self.removed)} removed."
        )


class _LastError(logging.Handler):
    """Keeps the last exception the app logs: its 500 handler logs each one with its
    traceback, its 503 handler a DatabaseUnavailable as the warning's argument."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.error = record.exc_info[1]
        elif isinstance(record.args, tuple):
            errors = [arg for arg in record.args if isinstance(arg, BaseException)]
            self.error = errors[-1] if errors else self.error


@contextmanager
def _freeze_errors(destination: Path) -> Iterator[None]:
    """Database and file-system failures, as messages for the person running the freeze."""
    try:
        yield
    except DatabaseUnavailable as error:
        raise FreezeError(f"{error}; the live build is unchanged") from None
    except OSError as error:
        raise FreezeError(
            f"cannot write the build for {destination}: {describe_os_error(destination, error)};"
            " the live build is unchanged"
        ) from None


class SiteBuild:
    """A build of the site into ``destination`` (default: the FREEZE_DIR setting)."""

    def __init__(self, app: Flask, destination: str | PathLike[str] | None = None) -> None:
        self.app = app
        self.trees = BuildTrees(Path(destination or app.config["FREEZE_DIR"]))
        #: The pages this build considers (every one but those of unchanged
        #: episodes), and those it must render.
        self.pages: list[Page] = []
        self.pending: list[Page] = []
        self.up_to_date = False
        #: Why every page is rendered, if it is (None for a build of what changed only).
        self.full_reason: str | None = None
        self._records: dict[str, FileRecord] = {}
        self._rendered: list[str] = []
        #: Each .gz file to write: its path, its record's inputs and content (None for
        #: an episode page's, of which the state keeps no record), how to get its pieces.
        self._compressed: list[tuple[str, tuple[str, str] | None, Compressed]] = []
        self._mtime_ns = time.time_ns()
        #: The episodes this build renders a page or a fragment of, by number.
        self._episodes: dict[int, Episode] = {}
        #: The numbers of the episodes new or changed since the live build, and of those gone.
        self._changed: set[int] = set()
        self._gone: set[int] = set()
        self._live_table: EpisodeTable | None = None
        #: The files of the pages this build considers but episodes' (see _plan_changes).
        self._other_files: set[str] = set()
        #: The bytes of the new build's episode pages, and of their .gz files.
        self._episode_bytes = [0, 0]
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
            self._data = site_data()
            self._compare_with_live()
            self.pages = plan_pages(self.app)
            self._plan_changes()
            self._mtimes = {
                path: int(page.listing.modified(self._data.state).timestamp()) * 1_000_000_000
                for page in self.pages
                if page.listing is not None and page.listing.modified is not None
                for path in page.files
            }
            # One WSGI environ, its path swapped per page: building a fresh one
            # per request (as the test client does) costs more than most pages.
            self._environ = EnvironBuilder(self.app).get_environ()
            self._gzipper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freeze-gzip")
            stack.callback(self._gzipper.shutdown, cancel_futures=True)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # The exception, if any, goes to the trees too: a failed build removes its unfinished tree.
        self._exit_stack.__exit__(*exc_info)

    @property
    def incremental(self) -> bool:
        """True if this build considers only what changed since the live build."""
        return self._live_table is not None

    def _compare_with_live(self) -> None:
        """Which episodes changed since the live build; read them (all, for a full build)."""
        data, live = self._data, self.trees.live_site
        table = data.table
        if live is not None and live.get("code") == data.code:
            self._live_table = EpisodeTable.from_json(live.get("episodes"))
        if self._live_table is None:
            self.full_reason = (
                f"there was no build in {self.trees.destination}"
                if self.trees.live is None
                else "the live build's state file is missing or unreadable"
                " (a build of another version, or one taken apart by hand)"
                if live is None
                else "the code, templates, rendering libraries or SITE_* settings changed"
                " since the live build"
                if live.get("code") != data.code
                else "the live build's state holds no table of episodes"
            )
        if live is not None:
            self._episode_bytes = list(live.get("episode_bytes", (0, 0)))
        if self._live_table is not None:
            self._changed, self._gone = table.changes_since(self._live_table)
            self._read_episodes(self._changed)
        else:
            self._changed = set(table.numbers)
            if live is not None:
                old = EpisodeTable.from_json(live.get("episodes"))
                self._gone = set(old.numbers) - self._changed if old is not None else set()
            self._read_episodes(None)
        data.episodes = [
            EpisodeRevision(episode.number, episode.slug, table.revision(episode.number))
            for episode in self._episodes.values()
            if episode.number in self._changed
        ]
        check_slugs(data.episodes)

    def _read_episodes(self, numbers: set[int] | None) -> None:
        """Read the episodes with these numbers (every one if None), in one query."""
        session = get_session()
        if numbers is None:
            episodes = queries.all_episodes(session)  # one pass over the table beats a lookup each
        else:
            episodes = queries.episodes_by_number(session, numbers - self._episodes.keys())
        self._episodes.update((episode.number, episode) for episode in episodes)
        # Every number the build's table holds, read later than the table: an episode deleted
        # in between would otherwise fail a listing's render with a bare KeyError.
        wanted = numbers if numbers is not None else set(self._data.table.numbers)
        missing = wanted - self._episodes.keys()
        if missing:
            raise FreezeError(
                f"episode {min(missing)} was deleted while the build ran;"
                " the live build is unchanged: freeze again"
            )

    def _plan_changes(self) -> None:
        live = self.trees.live_records
        self.pending = [
            page for page in self.pages if page.number is not None or _stale(page, live)
        ]
        self._generated = {REDIRECTS: redirect_rules(self.app, self.pages)}
        keep = {path for page in self.pages if page.number is None for path in page.files}
        self._other_files = keep
        self.up_to_date = (
            not self.pending
            and not self._gone
            and keep | {EPISODE_MAP, REDIRECTS} == live.keys()
            and self._unchanged(REDIRECTS, content_digest(self._generated[REDIRECTS]))
        )
        if not self.up_to_date:
            self.trees.prepare()
            for path in live.keys() - keep - {EPISODE_MAP, REDIRECTS}:
                self.trees.remove(path)  # a page or a static file the site no longer has

    def render(self, page: Page) -> None:
        """Render ``page`` as the live app answers a GET of its URL, and store it."""
        environ = {**self._environ, "PATH_INFO": _wsgi_path(page.url)}
        with _freeze_errors(self.trees.destination), self.app.request_context(environ):
            if page.number is None and page.listing is None:
                self._store(page, self._dispatch(page))
            else:
                try:
                    if page.listing is not None:
                        self._compose(page)
                    else:
                        assert page.number is not None, "a page without a listing is an episode"
                        body = render_episode_page(self.app, self._episodes[page.number])
                except (FreezeError, DatabaseUnavailable):
                    raise
                except Exception as error:  # a template error: say which page
                    raise _page_error(page, f"{type(error).__name__}: {error}") from error
                if page.listing is None:
                    self._store_episode(page, body)  # outside: a full disk is not the page's fault
            self._rendered.append(page.url)

    def _compose(self, page: Page) -> None:
        """A listing's file and .gz, as its view composes it: see splice.py."""
        listing = page.listing
        assert listing is not None
        table = self._data.table
        live = self._live_listing(page)
        if live is None and self.incremental and len(self._episodes) < len(table):
            self._read_episodes(set(table.numbers))  # every fragment is to be rendered
        # The fragments to render: the changed episodes' (newest first), or every one.
        entries: Sequence[EpisodeRevision] = self._data.episodes if live is not None else table
        texts = listing.fragments.for_entries(
            entries, lambda numbers: [self._episodes[number] for number in numbers]
        )
        fragments = {
            entry.number: text.encode() for entry, text in zip(entries, texts, strict=True)
        }
        before, after = (part.encode() for part in listing.frame(table, self._data.state))
        splice = Splice.plan(
            live, table.numbers, fragments, self._gone if live else (), before, after
        )
        compressed = splice.gzip(
            listing.chunk_every,
            lambda chunk: self._gzipper.submit(chunked_gzip.deflate, chunk),
            None if live is not None else self._reusable_chunks(page.files[1]),
        )
        content = chunked_gzip.digest_of(compressed.digests)
        layout = splice.layout.to_json()
        if self._keep(page, content, layout):
            return
        self._write(page.path, splice.pieces, page.inputs, content, layout)
        self._compressed.append((page.files[1], (page.inputs, content), compressed.finish))

    def _live_listing(self, page: Page) -> LiveListing | None:
        """The live build's file and .gz of a listing, if this build may splice them."""
        if self._live_table is None:
            return None
        records = [self.trees.live_records.get(path) for path in page.files]
        if any(record is None or not record.layout for record in records):
            return None
        page_record, gz_record = records
        read = self.trees.live_reader(page.path, page_record)  # type: ignore[arg-type]
        if read is None or self.trees.live_reader(page.files[1], gz_record) is None:  # type: ignore[arg-type]
            return None
        try:
            return LiveListing.of(
                Layout.from_json(page_record.layout),  # type: ignore[union-attr, arg-type]
                self._live_table.numbers,
                gz_record.layout,  # type: ignore[union-attr, arg-type]
                (page_record.size, gz_record.size),  # type: ignore[union-attr]
                read,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def _reusable_chunks(self, path: str) -> dict[str, bytes]:
        """The deflated chunks of the live build's ``path``, by digest (for a full build)."""
        record = self.trees.live_records.get(path)
        data = self.trees.read_live(path) if record is not None and record.layout else None
        if data is None or len(data) != record.size:  # type: ignore[union-attr]
            return {}
        try:
            rows = json.loads(record.layout)["chunks"]  # type: ignore[union-attr, arg-type]
            records = [chunked_gzip.ChunkRecord(*row[1:]) for row in rows]
            return chunked_gzip.GzipChunks(data, records).reusable()
        except (KeyError, TypeError, ValueError):
            return {}

    def _dispatch(self, page: Page) -> bytes:
        self._errors.error = None
        with self.app.full_dispatch_request() as response:
            if response.status_code != page.status:
                error = self._errors.error
                if isinstance(error, DatabaseUnavailable):
                    # What failed is the database, which answered when the build began.
                    raise FreezeError(
                        f"{error}; the live build is unchanged: freeze again once the database"
                        " answers"
                    )
                cause = f" ({type(error).__name__}: {error})" if error else ""
                raise _page_error(page, f"the app answered {response.status}{cause}")
            response.direct_passthrough = False  # static files: read the file as a server would
            return response.get_data()

    def commit(self) -> BuildReport:
        """Write the .gz files and what goes with the pages, and make the build live."""
        if self.up_to_date:
            return self._report(self.trees.live_records, changed=[], removed=[])
        with _freeze_errors(self.trees.destination):
            rendered = set(self._rendered)
            for page in self.pages:
                if page.number is None and page.url not in rendered:
                    for path in page.files:  # in the spare already, linked from the live build
                        self._keep_file(path, page.inputs, self.trees.live_records[path].content)
            episode_map = self._episode_map(self._remove_old_episode_files())
            if episode_map is None:
                self._records[EPISODE_MAP] = self.trees.live_records[EPISODE_MAP]
            else:
                self._generated[EPISODE_MAP] = episode_map
            for path, data in self._generated.items():
                content = content_digest(data)
                if not self._keep_file(path, content, content):
                    self._write(path, data, content, content)
            # The .gz files last: the gzip thread works on while the rest is written.
            for path, recorded, compressed in self._compressed:
                pieces, layout = compressed()
                if recorded is not None:
                    self._write(path, pieces, *recorded, layout)
                else:
                    self._episode_bytes[1] -= self.trees.size(path)
                    self._episode_bytes[1] += self.trees.write(path, pieces, self._mtime_ns).size
            site = {
                "code": self._data.code,
                "episodes": self._data.table.to_json(),
                "episode_bytes": self._episode_bytes,
            }
            report = self._report(self._records, self.trees.changed, self.trees.removed)
            self.trees.commit(self._records, site, self._manifest(report))
        return report

    def _remove_old_episode_files(self) -> bool:
        """Remove the pages of deleted episodes, and the old ones of episodes at a new URL.

        Found in the episode's directory; a file there that is another page's (an
        episode's transcript frozen beside its page, say) is that page's to keep or remove.
        Returns True if an episode's URL came, went or moved.
        """
        pages = {page.number: page for page in self.pages if page.number is not None}
        moved = bool(self._gone)
        for number in self._changed | self._gone:
            directory = self._episode_directory(number)
            page = pages.get(number)
            if page is not None and page.path not in self.trees.live_files(directory):
                moved = True
            for path in self.trees.listdir(directory):
                if path not in self._other_files and (page is None or path not in page.files):
                    self._episode_bytes[path.endswith(".gz")] -= self.trees.size(path)
                    self.trees.remove(path)
        return moved

    def _episode_directory(self, number: int) -> str:
        """Where an episode's files are: the directory of its page's file (see SiteFreezer)."""
        freezer = site_freezer(self.app)
        return posixpath.dirname(freezer.urlpath_to_filepath(episode_path(number, "page")))

    def _episode_map(self, moved: bool) -> bytes | None:
        """nginx/episodes.map, if it is to be made again (None: the live one is still right)."""
        if not self.incremental:
            return episodes_map(self._data.episodes)
        if moved or EPISODE_MAP not in self.trees.live_records:
            return episodes_map(queries.episode_revisions(get_session()))
        return None

    def _store(self, page: Page, body: bytes) -> None:
        """Keep or write a page the app rendered, and gzip it on the gzip thread."""
        content = content_digest(body)
        if self._keep(page, content):
            return
        self._write(page.path, body, page.inputs, content)
        for path in page.files[1:]:
            future = self._gzipper.submit(_gzip_whole, body)
            self._compressed.append((path, (page.inputs, content), future.result))

    def _store_episode(self, page: Page, body: bytes) -> None:
        """Keep or write an episode's page (the build keeps no record of each: see site.py)."""
        if self.trees.read_live(page.path) == body:
            return  # the spare holds these bytes and their .gz, linked from the live build
        self._episode_bytes[0] += len(body) - self.trees.size(page.path)
        self.trees.write(page.path, body, self._mtime_ns)
        for path in page.files[1:]:
            self._compressed.append((path, None, self._gzipper.submit(_gzip_whole, body).result))

    def _keep(self, page: Page, content: str, layout: str | None = None) -> bool:
        """Keep ``page``'s files if they hold ``content`` already (same bytes: same mtime)."""
        if not all(path in self.trees.live_records for path in page.files):
            return False
        if not self._keep_file(page.path, page.inputs, content, layout):
            return False
        for path in page.files[1:]:
            self._keep_file(path, page.inputs, self.trees.live_records[path].content)
        return True

    def _keep_file(self, path: str, inputs: str, content: str, layout: str | None = None) -> bool:
        record = self.trees.live_records.get(path)
        if record is None or record.content != content:
            return False
        if record.inputs != inputs:
            record = record._replace(inputs=inputs)
        if layout is not None and record.layout != layout:
            record = record._replace(layout=layout)  # same bytes, other revisions
        self._records[path] = record
        return True

    def _unchanged(self, path: str, content: str) -> bool:
        record = self.trees.live_records.get(path)
        return record is not None and record.content == content

    def _write(
        self,
        path: str,
        data: bytes | Sequence[bytes | Range],
        inputs: str,
        content: str,
        layout: str | None = None,
    ) -> None:
        # A page and its .gz get the same mtime, as nginx's gzip_static expects.
        mtime_ns = self._mtimes.get(path)
        if mtime_ns is None:
            mtime_ns = self._mtime_ns
        elif (live := self.trees.live_records.get(path)) and mtime_ns <= live.mtime_ns:
            # Other bytes from data no newer: a setting changed (the site's title). nginx's
            # ETag is "<mtime>-<size>": the same time and size (a title of the same length)
            # would tell a client holding the old bytes 304. A second later, it cannot.
            mtime_ns = live.mtime_ns + 1_000_000_000
        self._records[path] = self.trees.write(path, data, mtime_ns, inputs, content, layout)

    def _report(
        self, records: dict[str, FileRecord], changed: list[str], removed: list[str]
    ) -> BuildReport:
        others = [page for page in self.pages if page.number is None]
        return BuildReport(
            destination=self.trees.destination,
            pages=len(self._data.table) + len(others),
            rendered=tuple(self._rendered),
            changed=tuple(changed),
            removed=tuple(removed),
            bytes=self._episode_bytes[0] + sum(records[page.path].size for page in others),
            compressed_bytes=self._episode_bytes[1]
            + sum(records[path].size for page in others for path in page.files[1:]),
            seconds=time.perf_counter() - self._started,
            site_version=self._data.state.version,
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
            "site_version": report.site_version,
        }


def _page_error(page: Page, reason: str) -> FreezeError:
    return FreezeError(f"cannot freeze {page.url}: {reason}; the live build is unchanged")


def _wsgi_path(url: str) -> str:
    """A URL path as WSGI's PATH_INFO holds it: its UTF-8 bytes, decoded as latin-1 (PEP 3333)."""
    return url.encode().decode("latin-1")


def _gzip_whole(data: bytes) -> tuple[list[bytes], None]:
    # mtime=0 and no file name in the header: the same page always compresses
    # to the same bytes.
    return [gzip.compress(data, compresslevel=9, mtime=0)], None


def _stale(page: Page, live: dict[str, FileRecord]) -> bool:
    """True if the live build lacks ``page`` or made it from other inputs."""
    return any(path not in live or live[path].inputs != page.inputs for path in page.files)


def freeze(app: Flask, destination: str | PathLike[str] | None = None) -> BuildReport:
    """Build the site into ``destination``, rendering only what changed. Raises FreezeError."""
    with SiteBuild(app, destination) as build:
        for page in build.pending:
            build.render(page)
        return build.commit()
