"""What a build holds: every page's URL, file and inputs, found by Frozen-Flask.

Frozen-Flask's URL generators list the URLs: the ones registered here read
every episode from the database, once; Frozen-Flask's own walks
``webapp/static``. Nothing is found by crawling. Each URL becomes a
:class:`Page`::

    with app.app_context():
        pages = plan_pages(app)
    pages[0]  # Page(url='/404.html', path='404.html', status=404, inputs='5d0c…', files=(…, '404.html.gz'))

A page's ``inputs`` digests everything its bytes depend on, so a rebuild
renders a page only when its inputs changed:

* every page: the code that renders it (the ``webapp`` modules the process
  has loaded: the app and the freezer, not tools such as the tuning lab), the
  templates and static files, the versions of the libraries that render
  them, the ``SITE_*`` settings;
* an episode page: that episode's fields and guests;
* the home page, the catalogue and the feed (and any page added later, until
  it is given narrower inputs): every episode, and ``site_state``, whose
  ``changed_at`` is the feed's lastBuildDate;
* static files and the 404 page: nothing more.

Episodes are digested field by field rather than trusted by ``updated_at``:
renaming a guest, or an edit that forgets ``updated_at``, still reaches the page.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import sys
from dataclasses import dataclass
from importlib.metadata import version
from operator import attrgetter
from pathlib import Path
from urllib.parse import quote, urlsplit

from flask import Flask, g
from flask_frozen import Freezer
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter, RequestRedirect

from .. import queries
from ..blueprints import pages
from ..db import get_session
from ..models import Episode, SiteState
from .output import FreezeError

#: Any URL no route matches: the live app's 404 body does not depend on which.
NOT_FOUND_URL = "/404.html"
#: URLs whose file is not the Frozen-Flask default; nginx picks the
#: Content-Type from the extension (see deploy/nginx for /episodes/rss).
FILE_NAMES = {NOT_FOUND_URL: "404.html", "/episodes/rss": "episodes/rss.xml"}
#: What nginx's gzip_static can serve: these get a ``.gz`` sibling.
COMPRESSED_SUFFIXES = frozenset({".html", ".xml", ".css", ".js", ".svg", ".json", ".txt"})
#: The libraries whose output ends up in the pages.
RENDERING_LIBRARIES = ("flask", "werkzeug", "jinja2", "markupsafe", "frozen-flask")
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def digest(*parts: str) -> str:
    """A short digest of ``parts``, for telling inputs or contents apart (not for security)."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Page:
    """A URL the live app answers, and the file of the build that holds its body."""

    url: str
    path: str
    status: int
    inputs: str
    #: ``path`` and, for text, its gzip sibling ``path.gz``
    files: tuple[str, ...]
    #: For an episode's page, the episode it shows (see render_episode_page).
    episode: Episode | None = None

    @classmethod
    def at(cls, url: str, path: str, status: int, inputs: str, episode: Episode | None = None) -> Page:
        if posixpath.splitext(path)[1] in COMPRESSED_SUFFIXES:
            return cls(url, path, status, inputs, (path, f"{path}.gz"), episode)
        return cls(url, path, status, inputs, (path,), episode)


@dataclass(frozen=True)
class SiteData:
    """The published data one build freezes."""

    state: SiteState
    #: every episode, by its canonical path
    episodes: dict[str, Episode]
    #: an episode's canonical path -> digest of the episode as its page shows it
    episode_inputs: dict[str, str]
    #: digest of every episode and of site_state
    inputs: str


def site_data() -> SiteData:
    """The data of this build, read once per app context (a build runs in one)."""
    if "freeze_site_data" not in g:
        session = get_session()
        state = queries.site_state(session)
        episodes = queries.all_episodes(session)
        if not episodes:
            raise FreezeError(
                "the database has no episodes, so the build would be an empty site:"
                " seed it (`flask --app webapp seed`) or point DATABASE_URL at the right database"
            )
        # repr() of the frozen dataclass covers every field and the guests.
        episode_inputs = {episode.path: digest(repr(episode)) for episode in episodes}
        g.freeze_site_data = SiteData(
            state,
            {episode.path: episode for episode in episodes},
            episode_inputs,
            digest(str(state.version), state.changed_at.isoformat(), *episode_inputs.values()),
        )
    return g.freeze_site_data


def _listing_pages():
    """Frozen-Flask URL generator: the pages that list episodes."""
    # The feed first: it is the largest to compress, which then overlaps
    # with rendering the others (see build.py).
    yield "feed.rss", {}
    yield "pages.catalogue", {}
    yield "pages.index", {}


def _episode_pages():
    """Frozen-Flask URL generator: every episode's page, from the database."""
    # Their canonical paths, where the view redirects every other URL of an
    # episode (and cheaper than 600 url_for calls).
    return site_data().episodes.keys()


class SiteFreezer(Freezer):
    """Frozen-Flask, told this site's URLs and nginx's file layout."""

    def __init__(self, app: Flask) -> None:
        # Nothing is crawled (log_url_for), and rules without arguments are not
        # frozen blindly: /search, /health and the API stay dynamic.
        super().__init__(app, with_no_argument_rules=False, log_url_for=False)
        self.register_generator(_listing_pages)
        self.register_generator(_episode_pages)

    def urlpath_to_filepath(self, path: str) -> str:
        """``/`` -> ``index.html``; ``/episodes/5/a-slug`` -> ``episodes/5/a-slug.html``.

        A URL without an extension is a page, which nginx finds with
        ``try_files $uri.html``; static files keep their names.
        """
        if path in FILE_NAMES:
            return FILE_NAMES[path]
        path = super().urlpath_to_filepath(path)
        return path if posixpath.splitext(path)[1] else f"{path}.html"


def site_freezer(app: Flask) -> SiteFreezer:
    """The app's freezer, made once: every Freezer adds a url_for hook to its app."""
    freezer = app.extensions.get("site_freezer")
    if freezer is None:
        freezer = app.extensions["site_freezer"] = SiteFreezer(app)
    return freezer


def code_fingerprint(app: Flask) -> str:
    """Digest of what renders every page: code, templates, static files, libraries, SITE_* settings."""
    hasher = hashlib.blake2b(digest_size=16)
    for path in sorted(_rendering_files(app)):
        hasher.update(str(path).encode() + b"\0" + path.read_bytes())
    for library in RENDERING_LIBRARIES:
        hasher.update(f"{library}={version(library)}\0".encode())
    settings = sorted((name, str(value)) for name, value in app.config.items() if name.startswith("SITE_"))
    hasher.update(repr(settings).encode())
    return hasher.hexdigest()


def _rendering_files(app: Flask) -> set[Path]:
    package = f"{PACKAGE_DIR}{os.sep}"
    modules = {
        Path(path)
        for path in [getattr(module, "__file__", None) for module in list(sys.modules.values())]
        if path and path.startswith(package)
    }
    folders = [Path(app.root_path, folder) for folder in (app.template_folder, app.static_folder) if folder]
    return modules | {path for folder in folders for path in folder.rglob("*") if path.is_file()}


def plan_pages(app: Flask) -> list[Page]:
    """Every page of the site, with the digest of its inputs. Needs an app context."""
    data = site_data()
    code = code_fingerprint(app)
    freezer = site_freezer(app)
    adapter = app.url_map.bind("localhost")
    pages = [Page.at(NOT_FOUND_URL, FILE_NAMES[NOT_FOUND_URL], 404, digest(code))]
    seen = set()
    for url in freezer.all_urls():
        if url in seen:
            continue
        seen.add(url)
        episode = data.episodes.get(url)
        inputs = digest(code, data.episode_inputs[url] if episode else _data_inputs(url, adapter, data))
        pages.append(Page.at(url, freezer.urlpath_to_filepath(url), 200, inputs, episode))
    return pages


def _data_inputs(url: str, adapter: MapAdapter, data: SiteData) -> str:
    """The digest of the data the page at ``url`` (not an episode's) shows."""
    endpoint, _ = adapter.match(url, method="GET")
    return "" if endpoint == "static" else data.inputs


def render_episode_page(episode: Episode) -> bytes:
    """The body ``pages.episode`` answers for the episode's canonical URL. Needs its request context.

    Rendered from the episode the build has already read: letting the view
    read each of 600 episodes again costs two queries per page, which on
    PostgreSQL is most of a page's time. tests/test_freeze.py checks the bytes
    against the live view for every page.
    """
    return pages.render_episode(episode).encode()


def episodes_map(data: SiteData) -> bytes:
    """nginx ``map`` entries, episode number -> canonical path, for the 301s the live app makes.

    ``5 /episodes/5/command-line-tools-with-ines-haddad;`` — paths are
    percent-encoded, so no slug an editor types can break nginx's syntax
    (``;``, spaces, quotes) or be read as a variable (``$``).
    """
    episodes = sorted(data.episodes.values(), key=attrgetter("number"))
    lines = (f"{episode.number} {quote(episode.path)};\n" for episode in episodes)
    return "".join(lines).encode()


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
