"""The JSON API under ``/api``, described by an OpenAPI 3.1 document.

    GET /api/episodes?page=2&per_page=20   a page of episodes, newest first
    GET /api/episodes/123                  one episode, with show notes
    GET /api/openapi.json                  this API, described (webapp/openapi.py)

Every answer can be cached and revalidated: a strong ETag (a digest of the
body) and ``Cache-Control``; a conditional GET gets a 304. A page of the list
links the others with absolute URLs, in the body (``links``) and in an
RFC 8288 ``Link`` header (first, prev, next, last). Malformed or out-of-range
parameters get a 400 with a reason (see params.py); every error is RFC 9457
problem details (errors.py), and any origin may read the API (cors.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from flask import Blueprint, Response, abort, current_app, jsonify, request, url_for
from werkzeug.http import generate_etag

from ..data_cache import data_cache
from ..db import get_session, queries
from ..db.backends import Session
from ..errors import problem
from ..listing import Fragments
from ..models import MAX_EPISODE_NUMBER, Episode, EpisodeItem, EpisodePage, SiteState
from ..openapi import DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE, openapi_document
from ..params import IF_MATCH_FAILED, answer_conditionally, int_arg
from ..rss import CHAPTERS_PATH, TRANSCRIPT_PATH
from ..show_notes import show_notes_html

blueprint = Blueprint("api", __name__)

#: Clients may reuse an answer for a minute, then revalidate it (a 304 if unchanged).
CACHE_CONTROL = "public, max-age=60"


def episode_summary(episode: Episode | EpisodeItem) -> dict[str, Any]:
    site = current_app.config["SITE_URL"]
    return {
        "number": episode.number,
        "title": episode.title,
        "slug": episode.slug,
        "url": site + episode.path,
        "published_at": episode.published_at.isoformat(),
        "duration_seconds": episode.duration_seconds,
        "summary": episode.summary,
        "guests": [{"name": guest.name, "slug": guest.slug} for guest in episode.guests],
        "audio": {"url": episode.audio_url, "bytes": episode.audio_bytes, "type": "audio/mpeg"},
        "transcript_url": site + TRANSCRIPT_PATH.format(number=episode.number)
        if episode.has_transcript
        else None,
        "chapters_url": site + CHAPTERS_PATH.format(number=episode.number)
        if episode.has_chapters
        else None,
    }


def page_links(result: EpisodePage) -> dict[str, str | None]:
    """Absolute URLs of this page and of the first, previous, next and last (None where none)."""

    def url(number: int) -> str | None:
        if not 1 <= number <= result.pages:
            return None
        path = url_for("api.episode_list", page=number, per_page=result.per_page)
        return current_app.config["SITE_URL"] + path

    return {
        "self": url(result.page),
        "first": url(1),
        "prev": url(result.page - 1),
        "next": url(result.page + 1),
        "last": url(result.pages),
    }


def _compact_json(value: Any) -> str:
    """``value`` as jsonify writes it in this app (sorted keys, compact: see create_app)."""
    return current_app.json.dumps(value, separators=(",", ":"))


def _serialise_summaries(episodes: Sequence[EpisodeItem]) -> list[str]:
    return [_compact_json(episode_summary(episode)) for episode in episodes]


#: Each episode's summary as JSON, kept per episode revision: a page of the
#: list serialises its envelope, not its episodes.
SUMMARIES = Fragments("api_summaries", _serialise_summaries)


class ListPage(NamedTuple):
    """A page of the list as it is answered: its body, its ETag and its Link header."""

    body: bytes
    etag: str
    link: str


@blueprint.get("/episodes")
def episode_list() -> Response:
    page = int_arg("page", default=1, minimum=1, maximum=MAX_PAGE)
    per_page = int_arg("per_page", default=DEFAULT_PER_PAGE, minimum=1, maximum=MAX_PER_PAGE)
    session = get_session()
    state = queries.site_state(session)
    # A page is the same until the data changes: made once per change in each process.
    answer = data_cache("api_pages", size=_page_size).get_or_make(
        state, (page, per_page), lambda: _list_page(session, state, page, per_page)
    )
    response = current_app.response_class(answer.body, mimetype=current_app.json.mimetype)  # type: ignore[attr-defined]
    response.headers["Link"] = answer.link
    response.set_etag(answer.etag)  # computed once per page: cacheable() finds it set
    return response


def _page_size(page: ListPage) -> int:
    return len(page.body)


def _list_page(session: Session, state: SiteState, page: int, per_page: int) -> ListPage:
    result = queries.episode_page(session, page, per_page, state.episode_count)
    if page > result.pages:
        last = result.pages
        abort(
            404, description=f"There is no page {page} at per_page={per_page}: the last is {last}."
        )
    links = page_links(result)
    summaries = SUMMARIES.for_entries(
        result.entries, lambda numbers: queries.episode_items(session, numbers)
    )
    envelope = _compact_json(
        {
            "links": links,
            "page": result.page,
            "pages": result.pages,
            "per_page": result.per_page,
            "total": result.total,
        }
    )
    # What jsonify(episodes=[...], **envelope) answers: keys are sorted, so
    # "episodes" comes first (tests/test_listing.py compares the bytes).
    body = f'{{"episodes":[{",".join(summaries)}],{envelope[1:]}\n'.encode()
    link = ", ".join(
        f'<{url}>; rel="{rel}"' for rel, url in links.items() if url is not None and rel != "self"
    )
    return ListPage(body, generate_etag(body), link)


def _serialise_episodes(episodes: Sequence[Episode]) -> list[str]:
    return [
        _compact_json(
            episode_summary(episode)
            | {
                "show_notes_html": show_notes_html(episode.show_notes),
                "transcript": episode.transcript,
            }
        )
        for episode in episodes
    ]


#: Each episode's own answer as JSON, kept per episode revision. It holds the
#: episode's whole text (show notes, transcript), so what is kept is bounded
#: in bytes too.
EPISODES = Fragments("api_episodes", _serialise_episodes, max_bytes=4_000_000)


@blueprint.get(f"/episodes/<int(max={MAX_EPISODE_NUMBER}):number>")
def episode_detail(number: int) -> Response:
    session = get_session()
    entry = queries.episode_revision(session, number)
    bodies = (
        []
        if entry is None
        else EPISODES.for_entries(
            [entry], lambda numbers: queries.episodes_by_number(session, numbers)
        )
    )
    if not bodies:  # no such episode, or deleted since
        abort(404, description=f"There is no episode {number}.")
    # As jsonify answers: the JSON and a newline.
    return current_app.response_class(bodies[0] + "\n", mimetype=current_app.json.mimetype)  # type: ignore[attr-defined]


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_app.config["SITE_URL"]))


@blueprint.after_request
def cacheable(response: Response) -> Response:
    """A strong ETag and a lifetime on every answer, and a 304 when the client has it already."""
    if request.method in ("GET", "HEAD") and response.status_code == 200:
        response.headers["Cache-Control"] = CACHE_CONTROL
        if not answer_conditionally(response):
            return problem(412, IF_MATCH_FAILED)
    return response
