"""The HTML pages, and ``/health``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from ..db import get_session, queries
from ..db.backends import DatabaseUnavailable
from ..errors import RETRY_AFTER_SECONDS
from ..models import MAX_EPISODE_NUMBER, Episode
from ..params import single_arg

blueprint = Blueprint("pages", __name__)

LATEST_COUNT = 10
#: Longer search text is refused rather than silently cut.
MAX_QUERY_LENGTH = 200


@blueprint.get("/")
def index() -> str:
    return render_template(
        "index.html", episodes=queries.latest_episodes(get_session(), LATEST_COUNT)
    )


#: Stands in for the items while a listing's frame renders: no page holds a NUL.
ITEMS_SLOT = "\0"


@blueprint.get("/episodes/")
def catalogue() -> str:
    episodes = queries.all_episodes(get_session())
    before, after = catalogue_frame(len(episodes))
    return f"{before}{''.join(catalogue_items(episodes))}{after}"


def catalogue_frame(count: int) -> tuple[str, str]:
    """The catalogue around its items, which the freezer keeps from build to build."""
    before, _, after = render_template(
        "catalogue.html", count=count, items=Markup(ITEMS_SLOT)
    ).partition(ITEMS_SLOT)
    return before, after


def catalogue_items(episodes: Sequence[Episode]) -> list[str]:
    """One ``<li>`` per episode, as every episode list shows it."""
    macros: Any = current_app.jinja_env.get_template("_macros.html").module
    episode_item = macros.episode_item
    return [episode_item(episode) for episode in episodes]


@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>")
@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>/<slug>")
def episode(number: int, slug: str | None = None) -> ResponseReturnValue:
    found = queries.episode_by_number(get_session(), number)
    if found is None:
        abort(404, description=f"There is no episode {number}.")
    if slug != found.slug:
        # One canonical URL per episode: old or mistyped slugs still work.
        return redirect(found.path, code=301)
    return render_episode(found)


def render_episode(episode: Episode) -> str:
    """An episode's page: the view's body, and the freezer's from episodes it has read already."""
    return render_template("episode.html", episode=episode)


@blueprint.get("/search")
def search() -> str:
    query = (single_arg("q") or "").strip()
    if len(query) > MAX_QUERY_LENGTH:
        abort(400, description=f"Search text is limited to {MAX_QUERY_LENGTH} characters.")
    results = queries.search(get_session(), query) if query else []
    return render_template("search.html", query=query, results=results)


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
