"""What podcast apps fetch besides the feed: the artwork, each episode's transcript and chapters.

    GET /artwork.png                        3000 × 3000 px, drawn from SITE_TITLE (webapp.artwork)
    GET /episodes/<number>/transcript.html  the transcript, the Podcast Namespace's HTML format
    GET /episodes/<number>/chapters.json    JSON chapters 1.2 (application/json+chapters)

The feed links them (``itunes:image``, ``podcast:transcript``,
``podcast:chapters``). Apps fetch a transcript or chapters when an episode
plays, web players from other origins too, so those two allow any origin
(CORS, cors.py), as the namespace's transcript notes ask. Each answer carries a strong
ETag and a lifetime, and a conditional GET gets a 304.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, abort, current_app, render_template
from werkzeug.wrappers import Response as BaseResponse

from ..artwork import cover_art
from ..db import get_session, queries
from ..models import MAX_EPISODE_NUMBER, Episode
from ..params import IF_MATCH_FAILED, answer_conditionally
from ..rss import ARTWORK_PATH, CHAPTERS_PATH, TRANSCRIPT_PATH

blueprint = Blueprint("podcast", __name__)

#: Apps may keep these an hour, as long as they keep the feed (blueprints/feed.py).
CACHE_CONTROL = "public, max-age=3600"
#: The artwork changes with the show's title: a day.
ARTWORK_CACHE_CONTROL = "public, max-age=86400"
CHAPTERS_VERSION = "1.2.0"
CHAPTERS_CONTENT_TYPE = "application/json+chapters"
EPISODE = f"<int(max={MAX_EPISODE_NUMBER}):number>"


def _cacheable(response: Response, cache_control: str) -> BaseResponse:
    """``response`` with a strong ETag of its body, answered 304 if the client has it already."""
    response.headers["Cache-Control"] = cache_control
    if not answer_conditionally(response):
        abort(412, description=IF_MATCH_FAILED)
    return response


def _episode(number: int) -> Episode:
    episode = queries.episode_by_number(get_session(), number)
    if episode is None:
        abort(404, description=f"There is no episode {number}.")
    return episode


@blueprint.get(ARTWORK_PATH)
def artwork() -> BaseResponse:
    image = cover_art(current_app.config["SITE_TITLE"])
    return _cacheable(Response(image, mimetype="image/png"), ARTWORK_CACHE_CONTROL)


@blueprint.get(TRANSCRIPT_PATH.format(number=EPISODE))
def transcript(number: int) -> BaseResponse:
    episode = _episode(number)
    if not episode.transcript:
        abort(404, description=f"Episode {number} has no transcript.")
    paragraphs = [part.strip() for part in episode.transcript.split("\n\n") if part.strip()]
    body = render_template("transcript.html", episode=episode, paragraphs=paragraphs)
    return _cacheable(Response(body, mimetype="text/html"), CACHE_CONTROL)


@blueprint.get(CHAPTERS_PATH.format(number=EPISODE))
def chapters(number: int) -> BaseResponse:
    episode = _episode(number)
    if episode.chapters_json is None:
        abort(404, description=f"Episode {number} has no chapters.")
    document = {
        "version": CHAPTERS_VERSION,
        "title": episode.title,
        "podcastName": current_app.config["SITE_TITLE"],
        "chapters": [
            {"startTime": chapter.start_seconds, "title": chapter.title}
            for chapter in episode.chapters
        ],
    }
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    response = Response(body.encode(), content_type=CHAPTERS_CONTENT_TYPE)
    return _cacheable(response, CACHE_CONTROL)
