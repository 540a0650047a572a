"""The HTML pages, and ``/health``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template
from flask.typing import ResponseReturnValue

from ..data_cache import data_cache
from ..db import get_session, queries
from ..db.backends import DatabaseUnavailable
from ..errors import RETRY_AFTER_SECONDS
from ..listing import Fragments, Listing, compose, register_page, template_frame
from ..models import Episode, EpisodeItem, EpisodeRevision, episode_routes
from ..params import page_url, single_arg

blueprint = Blueprint("pages", __name__)

LATEST_COUNT = 10
#: Longer search text is refused rather than silently cut.
MAX_QUERY_LENGTH = 200
#: An episode's page, and its number alone (redirected there): see models.EPISODE_URL.
EPISODE_ROUTE, EPISODE_NUMBER_ROUTE = episode_routes()


def render_episode_items(episodes: Sequence[EpisodeItem]) -> list[str]:
    """One ``<li>`` per episode (``_macros.html``), as every list of episodes shows it."""
    macros: Any = current_app.jinja_env.get_template("_macros.html").module
    episode_item = macros.episode_item
    return [episode_item(episode) for episode in episodes]


def load_items(numbers: Sequence[int]) -> list[EpisodeItem]:
    return queries.episode_items(get_session(), numbers)


#: The catalogue's, the home page's and the search results' ``<li>``, one per episode revision.
EPISODE_ITEMS = Fragments("episode_items", render_episode_items)

#: Every episode. Frozen, its gzip in chunks of 64 episodes (see Listing).
CATALOGUE = Listing(
    lambda entries, state: template_frame("catalogue.html", count=len(entries)),
    EPISODE_ITEMS,
    chunk_every=64,
)


@blueprint.get("/")
def index() -> str:
    entries = queries.latest_revisions(get_session(), LATEST_COUNT)
    return list_page("index.html", entries)


@blueprint.get("/episodes/")
def catalogue() -> str:
    return CATALOGUE.render(queries.episode_revisions(get_session()), load_items)


@blueprint.get(EPISODE_ROUTE)
@blueprint.get(EPISODE_NUMBER_ROUTE)
def episode(number: int, slug: str | None = None) -> ResponseReturnValue:
    found = queries.episode_by_number(get_session(), number)
    if found is None:
        abort(404, description=f"There is no episode {number}.")
    if slug != found.slug:
        # One canonical URL per episode: old or mistyped slugs still work.
        # Percent-encoded: a slug may hold what a Location header or a URL cannot (a newline).
        return redirect(page_url(found.path), code=301)
    return render_episode(found)


def render_episode(episode: Episode) -> str:
    """An episode's page: the view's body, and the freezer's from episodes it has read already."""
    return render_template("episode.html", episode=episode)


#: Search pages kept per process (data_cache), besides its bound in bytes.
SEARCH_PAGES_KEPT = 256


@blueprint.get("/search")
def search() -> str | bytes:
    query = (single_arg("q") or "").strip()
    if len(query) > MAX_QUERY_LENGTH:
        abort(400, description=f"Search text is limited to {MAX_QUERY_LENGTH} characters.")
    if not query or current_app.jinja_env.auto_reload:  # templates being edited: rendered afresh
        return search_page(query)
    # The page of the same text is the same until the data changes. It is kept whole and
    # served to everyone: the search page (base.html included) must depend only on the
    # config, the text and the data, never on the request's cookies or headers (a test
    # checks it). Something per visitor (a CSRF token, a name) would need a cache without it.
    # Kept as UTF-8, what the response sends: a str holding one emoji (the search text is
    # in the page) takes 4 bytes per character, its UTF-8 about 1, and a hit is not encoded.
    cache = data_cache("search_pages", max_entries=SEARCH_PAGES_KEPT)
    return cache.get_or_make(
        queries.site_state(get_session()), query, lambda: search_page(query).encode()
    )


def search_page(query: str) -> str:
    """The results page for the search box's ``query``, best match first."""
    entries = queries.search(get_session(), query) if query else []
    return list_page("search.html", entries, query=query)


def list_page(template_name: str, entries: Sequence[EpisodeRevision], **context: object) -> str:
    """A page of ``template_name`` around the ``<li>`` of each of ``entries``."""
    frame = template_frame(template_name, count=len(entries), **context)
    return compose(frame, EPISODE_ITEMS.for_entries(entries, load_items))


register_page(blueprint, "catalogue", CATALOGUE)
register_page(blueprint, "episode", render_episode)


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    """For load balancers and monitors: is the database reachable, and what does it hold."""
    try:
        state = queries.site_state(get_session())
    except DatabaseUnavailable:
        response = jsonify(status="unavailable", database="unreachable")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, 503
    return jsonify(status="ok", database="ok", episodes=state.episode_count), 200
