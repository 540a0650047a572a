"""``/episodes/rss``: the site's largest and most polled response, made cheap.

Podcast apps poll the feed every hour. Three layers keep that cheap:

1. A conditional GET (``If-None-Match`` / ``If-Modified-Since``) is answered
   with 304 after one primary-key read of ``site_state``, before any episode
   is loaded or any XML written.
2. A full GET for unchanged data is served from bytes cached in this process.
3. Only a GET after the data changed renders the feed, once per process.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, request
from werkzeug.http import http_date, is_resource_modified

from .. import queries
from ..db import get_session
from ..listing import Entry, Fragments, Frame, Listing, register_page
from ..models import Episode, SiteState
from ..rss import CONTENT_TYPE, FORMAT_VERSION, FeedChannel, feed_frame, feed_items

blueprint = Blueprint("feed", __name__)

#: Clients may reuse the feed for five minutes without asking; after that a
#: conditional GET costs them (and us) almost nothing.
CACHE_CONTROL = "public, max-age=300"


@dataclass(frozen=True)
class RenderedFeed:
    etag: str
    body: bytes


class FeedCache:
    """The last rendered feed of this process, keyed by the data's version.

    One slot is enough: an old version is never asked for again. The lock
    makes concurrent threads that miss wait for one render instead of each
    doing their own.
    """

    def __init__(self) -> None:
        self._feed: RenderedFeed | None = None
        self._lock = threading.Lock()

    def get(self, etag: str) -> bytes | None:
        feed = self._feed
        return feed.body if feed is not None and feed.etag == etag else None

    def get_or_render(self, etag: str, render) -> bytes:
        body = self.get(etag)
        if body is not None:
            return body
        with self._lock:
            body = self.get(etag)
            if body is None:
                body = render()
                self._feed = RenderedFeed(etag, body)
        return body


def feed_etag(state: SiteState, site_url: str) -> str:
    """A strong ETag derived from the data (and what else shapes the bytes)."""
    key = f"{FORMAT_VERSION}:{state.version}:{state.changed_at.isoformat()}:{site_url}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _channel() -> FeedChannel:
    return FeedChannel.from_config(current_app.config)


def _frame(entries: Sequence[Entry], state: SiteState) -> Frame:
    return Frame(*feed_frame(_channel(), state.changed_at))


#: The feed: its channel around one ``<item>`` per episode. The items are not
#: kept one by one: the feed is kept whole (FeedCache), and by the freezer.
FEED = Listing(
    _frame,
    Fragments("feed_items", lambda episodes: feed_items(episodes, _channel()), cached=False),
    # Frozen in gzip chunks of about 64 KiB (see Listing).
    chunk_every=32,
)


def render_current_feed(state: SiteState) -> bytes:
    """The feed for the app's current data (the freezer composes the same, keeping fragments)."""
    session = get_session()

    def every_episode(numbers: Sequence[int]) -> list[Episode]:
        return queries.all_episodes(session)  # one pass over the table beats a lookup each

    return FEED.render(queries.episode_revisions(session), every_episode, state).encode()


register_page(blueprint, "rss", FEED)
blueprint.record_once(lambda state: state.app.extensions.setdefault("feed_cache", FeedCache()))


@blueprint.get("/episodes/rss")
def rss() -> Response:
    state = queries.site_state(get_session())
    etag = feed_etag(state, current_app.config["SITE_URL"])
    headers = {
        "ETag": f'"{etag}"',
        "Last-Modified": http_date(state.changed_at),
        "Cache-Control": CACHE_CONTROL,
    }
    if not is_resource_modified(request.environ, etag=etag, last_modified=state.changed_at):
        return Response(status=304, headers=headers)
    cache: FeedCache = current_app.extensions["feed_cache"]
    body = cache.get_or_render(etag, lambda: render_current_feed(state))
    return Response(body, content_type=CONTENT_TYPE, headers=headers)
