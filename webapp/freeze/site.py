"""What a build holds: every page's URL, file and inputs, found by Frozen-Flask.

Frozen-Flask's URL generators list the URLs: the ones registered here list
the episodes a build considers (every one, or those that changed since the
live build: see build.py); Frozen-Flask's own walks ``webapp/static``.
Nothing is found by crawling. Each URL becomes a :class:`Page`::

    with app.app_context():
        pages = plan_pages(app)
    pages[0]  # Page(url='/404.html', path='404.html', status=404, inputs='5d0c…', files=…)

A page's ``inputs`` digests everything its bytes depend on, so a rebuild
renders a page only when its inputs changed:

* every page: the code that renders it (the ``webapp`` modules the process
  has loaded: the app and the freezer, not tools such as the tuning lab), the
  templates and static files, the versions of the libraries that render
  them, the ``SITE_*`` settings;
* an episode page: that episode's revision (kept in the :class:`EpisodeTable`
  of the build, not one record per page);
* the home page: the revisions of the episodes it lists;
* the catalogue: every episode's revision; the feed: those and
  ``site_state.changed_at``, its lastBuildDate; any page added later, until
  it is given narrower inputs: all of that and ``site_state.version``;
* static files, the artwork and the 404 page: nothing more.

An episode's revision is a random token the database's triggers draw anew
for any write to the episode or its guests (see ``episode_revisions`` in the
schemas): renaming a guest, or an edit that
forgets ``updated_at``, still reaches the page, and an unchanged episode costs
the build one row of two numbers. The catalogue and the feed are
:class:`~webapp.listing.Listing` pages, one fragment per episode, which
their views register for the freezer (``webapp.listing.register_page``), as
the episode's view registers how its page renders; a rebuild renders the
fragments of changed episodes only (see build.py).
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import operator
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from flask import Flask, current_app, g
from flask_frozen import Freezer
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from ..blueprints import pages
from ..db import get_session, queries
from ..db.backends import Session
from ..listing import Listing, page_renderer
from ..models import EPISODE_URL, MAX_EPISODE_NUMBER, Episode, EpisodeRevision, SiteState
from ..rss import CHAPTERS_PATH, TRANSCRIPT_PATH
from .output import FreezeError, content_digest

#: Any URL no route matches: the live app's 404 body does not depend on which.
NOT_FOUND_URL = "/404.html"
#: URLs whose file is not the Frozen-Flask default; nginx picks the
#: Content-Type from the extension (see deploy/nginx for /episodes/rss).
FILE_NAMES = {NOT_FOUND_URL: "404.html", "/episodes/rss": "episodes/rss.xml"}
#: What nginx's gzip_static can serve: these get a ``.gz`` sibling.
COMPRESSED_SUFFIXES = (".html", ".xml", ".css", ".js", ".svg", ".json", ".txt")
#: The libraries whose output ends up in the pages.
RENDERING_LIBRARIES = ("flask", "werkzeug", "jinja2", "markupsafe", "frozen-flask", "nh3", "pillow")
#: The view of an episode's page, whose registered renderer the freezer calls.
EPISODE_ENDPOINT = "pages.episode"


def digest(*parts: str) -> str:
    """A short digest of ``parts``, for telling inputs or contents apart (not for security)."""
    return content_digest("\0".join(parts).encode())


#: What to do about a column that holds what is not a 64-bit integer.
NOT_INT64_FIXES = {
    "episodes.number": "set each such number to an integer"
    " (UPDATE episodes SET number = ... WHERE id = ...)",
    "episode_revisions.revision": "delete each such revision"
    " (DELETE FROM episode_revisions WHERE episode_id = ...) and run"
    " `flask --app webapp init-db`, which draws a new one",
}


class EpisodeTable(Sequence[EpisodeRevision]):
    """Every episode's number and revision, newest number first: what a build compares.

    Two arrays of 64-bit integers: a build reads one row per episode and
    compares the table with the live build's in C, not a Python object per
    episode; the state file holds each array as base64. As a sequence, its
    items have no slug (the table does not hold them): lists need none.
    """

    def __init__(self, numbers: array, revisions: array) -> None:
        self.numbers = numbers
        self.revisions = revisions

    @classmethod
    def read(cls, session: Session) -> EpisodeTable:
        try:
            table = cls(*queries.episode_table(session))
        except queries.UnrevisedEpisodes as unrevised:
            raise FreezeError(
                f"episode(s) {unrevised} have no revision, so a build cannot tell whether they"
                " changed: run `flask --app webapp init-db`, which gives them one"
            ) from None
        except queries.NotInt64 as unreadable:
            columns = {column for _, column, _ in unreadable.found}
            fixes = [
                fix for column, fix in NOT_INT64_FIXES.items() if column in columns or not columns
            ]
            raise FreezeError(
                f"{unreadable}: a build reads every number and revision as a 64-bit integer"
                f" (SQLite keeps any value in any column): {'; '.join(fixes)}"
            ) from None
        # Newest number first: the ends of the table are its extremes.
        if table.numbers and (table.numbers[0] > MAX_EPISODE_NUMBER or table.numbers[-1] < 0):
            bad = [n for n in table.numbers if not 0 <= n <= MAX_EPISODE_NUMBER][:10]
            raise FreezeError(
                f"episodes.number holds {', '.join(map(str, bad))}: an episode's URL holds a"
                f" number from 0 to {MAX_EPISODE_NUMBER}, and the app answers 404 for its page"
                " at any other, so a build cannot freeze it: set each such number to one in"
                " that range (UPDATE episodes SET number = ... WHERE number = ...)"
            )
        return table

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, index: int) -> EpisodeRevision:  # type: ignore[override]
        return EpisodeRevision(self.numbers[index], "", self.revisions[index])

    def revision(self, number: int) -> int:
        """The revision of episode ``number``, which must be in the table."""
        index = bisect.bisect_left(self.numbers, -number, key=operator.neg)
        if index == len(self.numbers) or self.numbers[index] != number:
            raise KeyError(number)
        return self.revisions[index]

    @functools.cached_property
    def digest(self) -> str:
        """A digest of every episode's revision: the catalogue's and the feed's inputs."""
        return content_digest(self.numbers.tobytes() + self.revisions.tobytes())

    def changes_since(self, old: EpisodeTable) -> tuple[set[int], set[int]]:
        """The numbers of the episodes new or changed since ``old``, and of those gone."""
        if self.numbers == old.numbers:  # no episode came or went: compare in place
            indexes = _differences(memoryview(self.revisions), memoryview(old.revisions))
            return {self.numbers[index] for index in indexes}, set()
        new = dict(zip(self.numbers, self.revisions, strict=True))
        before = dict(zip(old.numbers, old.revisions, strict=True))
        changed = {number for number, _ in new.items() - before.items()}
        return changed, before.keys() - new.keys()

    def to_json(self) -> dict[str, str]:
        return {
            "numbers": base64.b64encode(self.numbers.tobytes()).decode(),
            "revisions": base64.b64encode(self.revisions.tobytes()).decode(),
        }

    @classmethod
    def from_json(cls, table: Any) -> EpisodeTable | None:
        """The table a state file holds; None if it holds none, or not one."""
        try:
            numbers, revisions = array("q"), array("q")
            numbers.frombytes(base64.b64decode(table["numbers"], validate=True))
            revisions.frombytes(base64.b64decode(table["revisions"], validate=True))
        except (KeyError, TypeError, ValueError):
            return None
        return cls(numbers, revisions) if len(numbers) == len(revisions) else None


def _differences(new: memoryview, old: memoryview, start: int = 0) -> list[int]:
    """The indexes at which two equally long arrays differ, found by halving: a few
    comparisons of whole slices (memcmp) per difference, not a Python step per item."""
    if new == old:
        return []
    if len(new) == 1:
        return [start]
    half = len(new) // 2
    return _differences(new[:half], old[:half], start) + _differences(
        new[half:], old[half:], start + half
    )


@dataclass
class SiteData:
    """The published data one build freezes, as far as telling changes apart needs."""

    state: SiteState
    table: EpisodeTable
    #: the episodes the home page lists
    latest: list[EpisodeRevision]
    #: see code_fingerprint
    code: str
    #: the episodes whose pages this build considers: every one, or the changed
    #: ones (set by the build, once it knows which)
    episodes: list[EpisodeRevision] = field(default_factory=list)


#: What a slug must not hold: its page's file would be written elsewhere (``/``, and
#: ``\\``, which browsers read as ``/``), or its link would name another URL (``%``
#: decodes, ``?`` and ``#`` end the path, a URL parser drops tabs and newlines), or no
#: file name can hold it (NUL), so the page could not be served as itself. Other controls
#: are percent-encoded in links, and nginx decodes them back to the file's name.
_NOT_IN_SLUG = re.compile(r"[/\\%?#\t\n\r\x00]")
#: The episode's other files, which the app and nginx serve at ``/episodes/<number>/<name>``.
_OTHER_FILES = frozenset(path.rpartition("/")[2] for path in (TRANSCRIPT_PATH, CHAPTERS_PATH))
#: A page's file is ``<slug>.html``, and its gzip sibling ``<slug>.html.gz``: a file name
#: longer than this many bytes is ENAMETOOLONG on Linux's file systems.
_NAME_MAX = 255
_LONGEST_SUFFIX = len(".html.gz")
SLUG_FIX = (
    "set each such slug to one URL segment (UPDATE episodes SET slug = ... WHERE number = ...)"
)


def check_slugs(episodes: Sequence[EpisodeRevision]) -> None:
    """Raise FreezeError naming every episode whose slug cannot be its page's file name.

    Slugs come from whatever tool the editors use, and a page's file is
    ``episodes/<number>/<slug>.html``: a slug ``../../x`` would write outside the
    build, and ``a/b`` or ``.`` a page that the link to it never reaches.
    """
    bad = [
        f"{episode.slug!r} for episode {episode.number}"
        for episode in episodes
        if episode.slug in ("", ".", "..")
        or _NOT_IN_SLUG.search(episode.slug)
        or episode.slug in _OTHER_FILES
        or len(episode.slug.encode()) + _LONGEST_SUFFIX > _NAME_MAX
    ]
    if bad:
        raise FreezeError(
            f"episodes.slug holds {'; '.join(bad)}: a slug is the last segment of its page's"
            " URL and its file's name, so it is not empty, '.' or '..', holds none of"
            " / \\ % ? #, a tab, a line break or NUL, is not"
            f" {' or '.join(sorted(_OTHER_FILES))} (the episode's other files), and is at most"
            f" {_NAME_MAX - _LONGEST_SUFFIX} bytes in UTF-8: {SLUG_FIX}"
        )


def site_data() -> SiteData:
    """The data of this build, read once per app context (a build runs in one)."""
    if "freeze_site_data" not in g:
        session = get_session()
        state = queries.site_state(session)
        table = EpisodeTable.read(session)
        if not table:
            raise FreezeError(
                "the database has no episodes, so the build would be an empty site:"
                " seed it (`flask --app webapp seed`) or point DATABASE_URL at the right database"
            )
        latest = queries.latest_revisions(session, pages.LATEST_COUNT)
        g.freeze_site_data = SiteData(state, table, latest, code_fingerprint(current_app))
    return g.freeze_site_data


class Page(NamedTuple):
    """A URL the live app answers, and the file of the build that holds its body.

    A tuple: a build makes one per page of the site, so it must be cheap to make.
    """

    url: str
    path: str
    status: int
    inputs: str
    #: ``path`` and, for text, its gzip sibling ``path.gz``
    files: tuple[str, ...]
    #: For an episode's page, the episode's number (see render_episode_page).
    number: int | None = None
    #: For a page of episodes the freezer composes (the catalogue, the feed), how.
    listing: Listing | None = None

    @classmethod
    def at(cls, url: str, path: str, status: int, inputs: str, **kind: object) -> Page:
        if path.endswith(COMPRESSED_SUFFIXES):
            return cls(url, path, status, inputs, (path, f"{path}.gz"), **kind)  # type: ignore[arg-type]
        return cls(url, path, status, inputs, (path,), **kind)  # type: ignore[arg-type]


def _listing_pages():
    """Frozen-Flask URL generator: the pages that list episodes."""
    # The feed first: it is the largest to compress, which then overlaps
    # with rendering the others (see build.py).
    yield "feed.rss", {}
    yield "pages.catalogue", {}
    yield "pages.index", {}


def _show_files():
    """Frozen-Flask URL generator: what the feed links besides episodes (the artwork)."""
    yield "podcast.artwork", {}


def _episode_pages():
    """Frozen-Flask URL generator: the page of each episode the build considers."""
    # Their canonical paths, where the view redirects every other URL of an
    # episode (and cheaper than 600 url_for calls).
    return [episode.path for episode in site_data().episodes]


#: An episode's page (but its other files), as deploy/nginx/site.conf.j2 finds its file: at
#: ``$uri.html``. Made from the URL the routes are declared from (its literal parts hold no
#: regular expression syntax): cheaper than a match of the app's routes, twice a page.
_EPISODE_PAGE = re.compile(EPISODE_URL.format(number="[0-9]+", slug="[^/]+"))


class SiteFreezer(Freezer):
    """Frozen-Flask, told this site's URLs and nginx's file layout."""

    def __init__(self, app: Flask) -> None:
        # Nothing is crawled (log_url_for), and rules without arguments are not
        # frozen blindly: /search, /health and the API stay dynamic.
        super().__init__(app, with_no_argument_rules=False, log_url_for=False)
        self.register_generator(_listing_pages)
        self.register_generator(_episode_pages)
        self.register_generator(_show_files)

    def urlpath_to_filepath(self, path: str) -> str:
        """``/`` -> ``index.html``; ``/episodes/5/a-slug`` -> ``episodes/5/a-slug.html``.

        A URL without an extension is a page, which nginx finds with
        ``try_files $uri.html``; static files keep their names.
        """
        if path in FILE_NAMES:
            return FILE_NAMES[path]
        if _EPISODE_PAGE.fullmatch(path) and path.rpartition("/")[2] not in _OTHER_FILES:
            # Whatever its slug ends with (``v1.0``, ``index.html``): nginx looks for $uri.html.
            return f"{path[1:]}.html"
        path = super().urlpath_to_filepath(path)
        return path if "." in path[path.rfind("/") + 1 :] else f"{path}.html"


def site_freezer(app: Flask) -> SiteFreezer:
    """The app's freezer, made once: every Freezer adds a url_for hook to its app."""
    freezer = app.extensions.get("site_freezer")
    if freezer is None:
        freezer = app.extensions["site_freezer"] = SiteFreezer(app)
    return freezer


def code_fingerprint(app: Flask) -> str:
    """Digest of what renders every page: code, templates, static files, libraries, SITE_*."""
    hasher = hashlib.sha256()
    for path in sorted(_rendering_files(app)):
        hasher.update(str(path).encode() + b"\0" + path.read_bytes())
    hasher.update(_library_versions().encode())
    settings = sorted(
        (name, str(value)) for name, value in app.config.items() if name.startswith("SITE_")
    )
    hasher.update(repr(settings).encode())
    return hasher.hexdigest()[:32]


@functools.cache
def _library_versions() -> str:
    # Once per process: it renders with the versions it imported, whatever
    # pip has installed since (and reading package metadata is slow).
    return "".join(f"{library}={_version(library)}\0" for library in RENDERING_LIBRARIES)


def _version(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        # A copy of the template that drops a library (Pillow, with the artwork) from its
        # dependencies meets this list first.
        raise FreezeError(
            f"{library} is not installed, and RENDERING_LIBRARIES (webapp/freeze/site.py) names"
            " it: a build digests the version of every library that renders pages; remove it"
            " from the list if no page renders with it, or install it"
        ) from None


def _rendering_files(app: Flask) -> set[Path]:
    # The app's own package, listed from disk rather than from sys.modules: what a build
    # renders with must not depend on which other modules (tools, tests) happen to be loaded.
    root = Path(app.root_path)
    modules = set(root.rglob("*.py"))
    folders = [root / folder for folder in (app.template_folder, app.static_folder) if folder]
    return modules | {path for folder in folders for path in folder.rglob("*") if path.is_file()}


def plan_pages(app: Flask) -> list[Page]:
    """The pages of the site but those of episodes the build does not consider, each with
    the digest of its inputs. Needs an app context."""
    data = site_data()
    freezer = site_freezer(app)
    adapter = app.url_map.bind("localhost")
    episodes = {episode.path: episode for episode in data.episodes}
    pages = [Page.at(NOT_FOUND_URL, FILE_NAMES[NOT_FOUND_URL], 404, digest(data.code))]
    seen = set()
    for url in freezer.all_urls():
        if url in seen:
            continue
        seen.add(url)
        path = freezer.urlpath_to_filepath(url)
        episode = episodes.get(url)
        if episode is not None:
            # Its inputs are its number and revision, which the table holds.
            pages.append(Page.at(url, path, 200, "", number=episode.number))
            continue
        endpoint, _ = adapter.match(url, method="GET")
        inputs = digest(data.code, _data_inputs(endpoint, data))
        renderer = page_renderer(app, endpoint)
        listing = renderer if isinstance(renderer, Listing) else None
        pages.append(Page.at(url, path, 200, inputs, listing=listing))
    return pages


def _data_inputs(endpoint: str, data: SiteData) -> str:
    """The digest of the data the page of ``endpoint`` (not an episode's) shows."""
    if endpoint in ("static", "podcast.artwork"):
        return ""
    if endpoint == "pages.index":
        return digest(*(f"{episode.number}.{episode.revision}" for episode in data.latest))
    every_episode = data.table.digest
    if endpoint == "pages.catalogue":
        return every_episode
    if endpoint == "feed.rss":
        return digest(data.state.changed_at.isoformat(), every_episode)
    return digest(str(data.state.version), data.state.changed_at.isoformat(), every_episode)


def render_episode_page(app: Flask, episode: Episode) -> bytes:
    """The body the episode's view answers for its canonical URL (in its request context).

    Rendered by the view's registered renderer from the episode the build
    has already read: letting the view read each of 600 episodes again costs
    two queries per page, which on PostgreSQL is most of a page's time.
    tests/test_freeze.py checks the bytes against the live view for every page.
    """
    render = page_renderer(app, EPISODE_ENDPOINT)
    if render is None or isinstance(render, Listing):
        raise FreezeError(f"no renderer is registered for {EPISODE_ENDPOINT} (see webapp.listing)")
    return render(episode).encode()


def episodes_map(episodes: Sequence[EpisodeRevision]) -> bytes:
    """nginx ``map`` entries, episode number -> canonical path, for the 301s the live app makes.

    ``5 /episodes/5/command-line-tools-with-ines-haddad;`` — paths are
    percent-encoded, so no slug an editor types can break nginx's syntax
    (``;``, spaces, quotes) or be read as a variable (``$``).
    """
    # Newest number first, as the queries give them.
    lines = (f"{episode.number} {_nginx_safe(episode.path)};\n" for episode in reversed(episodes))
    return "".join(lines).encode()


_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9/_.~-]*")


def _nginx_safe(path: str) -> str:
    # Most slugs need no quoting, and a match is cheaper than quote().
    return path if _NEEDS_NO_QUOTING.fullmatch(path) else quote(path)


def redirect_rules(app: Flask, pages: list[Page]) -> bytes:
    """nginx ``location`` blocks for the app's other redirects to frozen pages.

    The app answers a URL without the trailing slash of its route with a
    redirect (Werkzeug's strict slashes: ``/episodes`` -> ``/episodes/``).
    nginx would otherwise serve the directory's index.html there too: the same
    page at two URLs.
    """
    adapter = app.url_map.bind("localhost")
    rules = []
    for page in pages:
        if not page.url.endswith("/") or page.url == "/":
            continue
        try:
            adapter.match(page.url[:-1], method="GET")
        except RequestRedirect as redirect:
            # Route paths come from code, not data: nothing in them needs escaping.
            target = urlsplit(redirect.new_url).path
            rules.append(f"location = {page.url[:-1]} {{ return {redirect.code} {target}; }}\n")
        except HTTPException:
            pass  # a 404 or 405 there, as nginx will answer too
    return "".join(rules).encode()
