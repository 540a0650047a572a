"""The HTML pages, and ``/health``."""
from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, redirect, render_template

from .. import queries
from ..database import DatabaseUnavailable
from ..db import get_session
from ..errors import RETRY_AFTER_SECONDS
from ..models import MAX_EPISODE_NUMBER, Episode
from ..params import single_arg

blueprint = Blueprint("pages", __name__)

LATEST_COUNT = 10
#: Longer search text is refused rather than silently cut.
MAX_QUERY_LENGTH = 200


@blueprint.get("/")
def index() -> str:
    return render_template("index.html", episodes=queries.latest_episodes(get_session(), LATEST_COUNT))


@blueprint.get("/episodes/")
def catalogue() -> str:
    return render_template("catalogue.html", episodes=queries.all_episodes(get_session()))


@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>")
@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>/<slug>")
def episode(number: int, slug: str | None = None) -> Response | str:
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
