"""``/episodes/rss``: the site's largest and most polled response, made cheap.

nginx serves the feed from the frozen build, and the app when a request
reaches it (a profiled request, a build that lacks the file). Both answer
with one set of validators, so an app that polls one and then the other gets
a 304, never the 1.2 MB again:

* ``Last-Modified`` is when the data last changed (``rss.modified_at``,
  whole seconds); the freezer gives the frozen file that modification time.
  When a setting alone changed the bytes (the site's title), it gives the
  file a second past the live one's instead, as the same time and size would
  keep nginx's ETag; the app, which knows no time for a setting, then sends
  an older one, so a client moving from one to the other downloads once.
* ``ETag`` is what nginx derives from a file, ``"<mtime hex>-<size hex>"``,
  computed here from the bytes this view sends. gzip_static sends the
  ``.gz`` file with its own size in the ETag; this view sends the same
  gzip bytes (chunked_gzip, cut where the freezer cuts), so it has the
  same ETag too.
* A conditional GET is judged as nginx judges it (``precondition_failed``,
  ``not_modified``).

Podcast apps poll every hour or so. What keeps that cheap:

1. The feed is rendered once per data change in each process, and gzipped
   once when a client first asks for gzip; a poll then costs one
   primary-key read of ``site_state`` and answers 304 or the cached bytes.
2. ``Cache-Control: max-age`` (and the feed's ``<ttl>``) tell the apps that
   honour them not to ask again within the hour (docs/feed-polling.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from flask import Blueprint, Response, abort, current_app, request
from werkzeug.http import http_date, parse_date, parse_etags

from ..db import get_session, queries
from ..freeze import chunked_gzip
from ..listing import Entry, Fragments, Frame, Listing, register_page
from ..models import Episode, SiteState
from ..params import if_match_fails
from ..rss import (
    CONTENT_TYPE,
    GZIP_CHUNK_EVERY,
    POLL_MINUTES,
    FeedChannel,
    feed_frame,
    feed_items,
    modified_at,
)

blueprint = Blueprint("feed", __name__)

#: Apps that honour it poll once an hour at most; nginx sends the same for the file.
CACHE_CONTROL = f"public, max-age={POLL_MINUTES * 60}"
#: What the cache knows a feed by: the data it was rendered from.
CacheKey = tuple[int, datetime]


@dataclass
class RenderedFeed:
    """The feed's bytes in the chunks its gzip is deflated in, and that gzip once made."""

    chunks: list[bytes]
    body: bytes = field(init=False)
    _gzipped: bytes | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.body = b"".join(self.chunks)

    @property
    def gzipped(self) -> bytes:
        """The gzip nginx's gzip_static sends: the freezer's .gz file, byte for byte."""
        if self._gzipped is None:
            with self._lock:
                if self._gzipped is None:
                    self._gzipped = chunked_gzip.compress(self.chunks).data
        return self._gzipped


class FeedCache:
    """The last rendered feed of this process, keyed by the data's version.

    One slot is enough: an old version is never asked for again. The lock
    makes concurrent threads that miss wait for one render instead of each
    doing their own.
    """

    def __init__(self) -> None:
        # The key and its feed in one attribute, read and replaced as one: read apart, a
        # poll between a render's two stores could take the previous feed for the next key,
        # and send it with the next key's validators (then 304s keep its holder on it).
        self._kept: tuple[CacheKey, RenderedFeed] | None = None
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> RenderedFeed | None:
        kept = self._kept
        return kept[1] if kept is not None and kept[0] == key else None

    def get_or_render(self, key: CacheKey, render: Callable[[], RenderedFeed]) -> RenderedFeed:
        feed = self.get(key)
        if feed is not None:
            return feed
        with self._lock:
            feed = self.get(key)
            if feed is None:
                feed = render()
                self._kept = (key, feed)
        return feed


def nginx_etag(modified: datetime, body: bytes) -> str:
    """The ETag nginx sends for a file of these bytes with this modification time."""
    return f'"{int(modified.timestamp()):x}-{len(body):x}"'


def not_modified(etag: str, modified: datetime) -> bool:
    """Whether the request's validators match, judged as nginx's not_modified filter does.

    nginx (``if_modified_since exact``, its default) needs every validator sent
    to match: ``If-Modified-Since`` the Last-Modified exactly, ``If-None-Match``
    the ETag by weak comparison (a gzipped answer's ``W/`` still matches).
    """
    since = request.headers.get("If-Modified-Since")
    tags = request.headers.get("If-None-Match")
    if since is None and tags is None:
        return False
    if since is not None and parse_date(since) != modified:
        return False
    return tags is None or parse_etags(tags).contains_weak(etag.strip('"'))


def precondition_failed(etag: str, modified: datetime) -> bool:
    """Whether ``If-Match`` or ``If-Unmodified-Since`` fails: a 412 instead of the feed.

    RFC 9110 13.2.2 has a server evaluate these before ``If-None-Match``, on a GET
    too, and nginx does for the frozen file. ``If-Match`` compares strongly: ``*``
    or the ETag itself, never a ``W/`` one. Where nginx departs from the RFC, on
    an invalid date (a 412 there) or ``If-Unmodified-Since`` beside ``If-Match``
    (both judged there), the app keeps to the RFC: it ignores the date.
    """
    if "If-Match" in request.headers:
        return if_match_fails(etag.strip('"'))
    since = parse_date(request.headers.get("If-Unmodified-Since"))
    return since is not None and modified > since


def _channel() -> FeedChannel:
    return FeedChannel.from_config(current_app.config)


def _frame(entries: Sequence[Entry], state: SiteState) -> Frame:
    return Frame(*feed_frame(_channel(), state.changed_at))


#: The feed: its channel around one ``<item>`` per episode. The items are not
#: kept one by one: the view keeps the feed whole (FeedCache), the freezer its file.
FEED = Listing(
    _frame,
    Fragments("feed_items", lambda episodes: feed_items(episodes, _channel()), cached=False),
    chunk_every=GZIP_CHUNK_EVERY,
    modified=lambda state: modified_at(state.changed_at),
)


def render_current_feed(state: SiteState) -> RenderedFeed:
    """The feed for the app's current data, cut as the freezer cuts it."""
    session = get_session()

    def every_episode(numbers: Sequence[int]) -> list[Episode]:
        return queries.all_episodes(session)  # one pass over the table beats a lookup each

    return RenderedFeed(
        FEED.render_chunks(queries.episode_revisions(session), every_episode, state)
    )


register_page(blueprint, "rss", FEED)
blueprint.record_once(lambda state: state.app.extensions.setdefault("feed_cache", FeedCache()))


@blueprint.get("/episodes/rss")
def rss() -> Response:
    state = queries.site_state(get_session())
    modified = modified_at(state.changed_at)
    cache: FeedCache = current_app.extensions["feed_cache"]
    feed = cache.get_or_render(
        (state.version, state.changed_at), lambda: render_current_feed(state)
    )
    gzipped = accepts_gzip()
    body = feed.gzipped if gzipped else feed.body
    headers = {
        "ETag": nginx_etag(modified, body),
        "Last-Modified": http_date(modified),
        "Cache-Control": CACHE_CONTROL,
        "Vary": "Accept-Encoding",
    }
    if precondition_failed(headers["ETag"], modified):
        abort(412)
    # A 304 carries the ETag (RFC 9110 15.4.5), so it too needs the feed: from the cache.
    if not_modified(headers["ETag"], modified):
        return Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(body, content_type=CONTENT_TYPE, headers=headers)


def accepts_gzip() -> bool:
    """Whether nginx would send this request the .gz file (gzip_static, gzip_http_version 1.1)."""
    if request.environ.get("SERVER_PROTOCOL") == "HTTP/1.0":
        return False
    # Content-codings are case-insensitive (RFC 9110 8.4.1): nginx sends the .gz for "GZIP" too.
    return any(
        coding.lower() == "gzip" and quality > 0 for coding, quality in request.accept_encodings
    )
