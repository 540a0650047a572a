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
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, request
from werkzeug.http import http_date, is_resource_modified

from ..db import get_session, queries
from ..models import SiteState
from ..rss import CONTENT_TYPE, FORMAT_CHANGED_AT, FeedChannel, render_feed

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
    key = (
        f"{FORMAT_CHANGED_AT.isoformat()}:{state.version}:{state.changed_at.isoformat()}:{site_url}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def render_current_feed(state: SiteState) -> bytes:
    """The feed for the app's current data (the freezer composes the same from fragments)."""
    episodes = queries.all_episodes(get_session())
    return render_feed(episodes, FeedChannel.from_config(current_app.config), state.changed_at)


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
