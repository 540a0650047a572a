"""The JSON API under ``/api``.

    GET /api/episodes?page=2&per_page=20   a page of episodes, newest first
    GET /api/episodes/123                  one episode, with show notes

Malformed or out-of-range parameters get a 400 with a reason (see params.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, url_for

from .. import queries
from ..db import get_session
from ..listing import Fragments
from ..models import MAX_EPISODE_NUMBER, Episode, EpisodeItem
from ..params import int_arg

blueprint = Blueprint("api", __name__)

MAX_PER_PAGE = 100
#: Far past any real catalogue; a larger page number is malformed, not a miss.
MAX_PAGE = 1_000_000


def episode_summary(episode: Episode | EpisodeItem) -> dict[str, Any]:
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


def _compact_json(value: Any) -> str:
    """``value`` as jsonify writes it in this app (compact: see create_app)."""
    return current_app.json.dumps(value, separators=(",", ":"))


def _serialise_summaries(episodes: Sequence[EpisodeItem]) -> list[str]:
    return [_compact_json(episode_summary(episode)) for episode in episodes]


#: Each episode's summary as JSON, kept per episode revision: a page of the
#: list serialises its envelope, not its episodes.
SUMMARIES = Fragments("api_summaries", _serialise_summaries)


@blueprint.get("/episodes")
def episode_list() -> Response:
    page = int_arg("page", default=1, minimum=1, maximum=MAX_PAGE)
    per_page = int_arg("per_page", default=20, minimum=1, maximum=MAX_PER_PAGE)
    session = get_session()
    result = queries.episode_page(session, page, per_page)
    if page > result.pages:
        abort(400, description=f"'page' must be from 1 to {result.pages} at per_page={per_page}")

    def page_url(number: int) -> str | None:
        if not 1 <= number <= result.pages:
            return None
        return url_for("api.episode_list", page=number, per_page=per_page)

    summaries = SUMMARIES.for_entries(
        result.entries, lambda numbers: queries.episode_items(session, numbers)
    )
    envelope = _compact_json(
        {
            "links": {"next": page_url(page + 1), "prev": page_url(page - 1)},
            "page": result.page,
            "pages": result.pages,
            "per_page": result.per_page,
            "total": result.total,
        }
    )
    # What jsonify(episodes=[...], **envelope) answers: keys are sorted, and
    # "episodes" comes first (tests/test_listing.py compares the bytes).
    body = f'{{"episodes":[{",".join(summaries)}],{envelope[1:]}\n'
    return current_app.response_class(body, mimetype=current_app.json.mimetype)  # type: ignore[attr-defined]


@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>")
def episode_detail(number: int) -> Response:
    episode = queries.episode_by_number(get_session(), number)
    if episode is None:
        abort(404, description=f"There is no episode {number}.")
    return jsonify(
        episode_summary(episode)
        | {"show_notes_html": episode.show_notes, "transcript": episode.transcript}
    )
