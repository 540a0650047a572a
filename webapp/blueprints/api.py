"""The JSON API under ``/api``.

    GET /api/episodes?page=2&per_page=20   a page of episodes, newest first
    GET /api/episodes/123                  one episode, with show notes

Malformed or out-of-range parameters get a 400 with a reason (see params.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, url_for

from ..db import get_session, queries
from ..models import MAX_EPISODE_NUMBER, Episode
from ..params import int_arg

blueprint = Blueprint("api", __name__)

MAX_PER_PAGE = 100
#: Far past any real catalogue; a larger page number is malformed, not a miss.
MAX_PAGE = 1_000_000


def episode_summary(episode: Episode) -> dict[str, Any]:
    return {
        "number": episode.number,
        "title": episode.title,
        "slug": episode.slug,
        "url": current_app.config["SITE_URL"] + episode.path,
        "published_at": episode.published_at.isoformat(),
        "duration_seconds": episode.duration_seconds,
        "summary": episode.summary,
        "guests": [{"name": guest.name, "slug": guest.slug} for guest in episode.guests],
        "audio": {"url": episode.audio_url, "bytes": episode.audio_bytes, "type": "audio/mpeg"},
    }


@blueprint.get("/episodes")
def episode_list() -> Response:
    page = int_arg("page", default=1, minimum=1, maximum=MAX_PAGE)
    per_page = int_arg("per_page", default=20, minimum=1, maximum=MAX_PER_PAGE)
    result = queries.episode_page(get_session(), page, per_page)
    if page > result.pages:
        abort(400, description=f"'page' must be from 1 to {result.pages} at per_page={per_page}")

    def page_url(number: int) -> str | None:
        if not 1 <= number <= result.pages:
            return None
        return url_for("api.episode_list", page=number, per_page=per_page)

    return jsonify(
        episodes=[episode_summary(episode) for episode in result.episodes],
        page=result.page,
        per_page=result.per_page,
        pages=result.pages,
        total=result.total,
        links={"next": page_url(page + 1), "prev": page_url(page - 1)},
    )


@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>")
def episode_detail(number: int) -> Response:
    episode = queries.episode_by_number(get_session(), number)
    if episode is None:
        abort(404, description=f"There is no episode {number}.")
    return jsonify(
        episode_summary(episode)
        | {"show_notes_html": episode.show_notes, "transcript": episode.transcript}
    )
