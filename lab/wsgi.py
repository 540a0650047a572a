"""The deployed application with its feed route swapped or another profiler, for comparisons.

    uwsgi --module lab.wsgi:application --env LAB_FEED=feedgen ...
    uwsgi --module lab.wsgi:application --env LAB_PROFILER=werkzeug --env LAB_PROFILE_DIR=...

``LAB_FEED=cold``: the app's own ``/episodes/rss`` with its per-process cache
turned off, so every GET queries all episodes and renders the feed (webapp.rss).
``LAB_FEED=feedgen``: every GET builds the same feed with feedgen, the
general-purpose library, as a site that does not cache would.
Anything else (or unset): the application unchanged.

``LAB_PROFILER=pyinstrument_recipe``: pyinstrument's documented Flask recipe
(requests with ``?profile`` answer its HTML page). ``LAB_PROFILER=werkzeug``:
Werkzeug's ProfilerMiddleware, every request's profile a file in
``LAB_PROFILE_DIR``. See lab.other_profilers.

This module is served only by the tuning lab, under the same uWSGI
configuration as ``webapp.wsgi``; the site itself never routes to it.
"""

from __future__ import annotations

import os

from flask import Response, current_app

from webapp.blueprints.feed import CacheKey, FeedCache, RenderedFeed
from webapp.db import get_session, queries
from webapp.rss import CONTENT_TYPE, FeedChannel
from webapp.wsgi import application

from .feedgen_feed import render_with_feedgen
from .other_profilers import install_pyinstrument_recipe, install_werkzeug_profiler

FEED_ENDPOINT = "feed.rss"


class NoFeedCache(FeedCache):
    """A cache that never has the feed: every request renders it."""

    def get(self, key: CacheKey) -> RenderedFeed | None:
        return None


def feedgen_view() -> Response:
    session = get_session()
    state = queries.site_state(session)
    body = render_with_feedgen(
        queries.all_episodes(session), FeedChannel.from_config(current_app.config), state.changed_at
    )
    return Response(body, content_type=CONTENT_TYPE)


variant = os.environ.get("LAB_FEED", "cached")
if variant == "cold":
    application.extensions["feed_cache"] = NoFeedCache()
elif variant == "feedgen":
    application.view_functions[FEED_ENDPOINT] = feedgen_view


profiler = os.environ.get("LAB_PROFILER")
if profiler == "pyinstrument_recipe":
    install_pyinstrument_recipe(application)
elif profiler == "werkzeug":
    install_werkzeug_profiler(application, os.environ["LAB_PROFILE_DIR"])
