"""The RSS feed: our writer vs feedgen on the same 600 episodes, cold and cached.

    pytest tests/benchmarks/test_feed_bench.py --benchmark-only

The ``feed`` group compares, in one run: a cold render with webapp.rss, the
same feed built with feedgen (a general-purpose library), a full GET served
from the per-process cache, and a conditional GET answered with 304.
"""

from __future__ import annotations

import pytest

from lab.feedgen_feed import render_with_feedgen
from webapp.db import get_database, queries
from webapp.rss import FeedChannel, render_feed


@pytest.fixture(scope="module")
def feed_data(seeded_sqlite_app):
    with get_database(seeded_sqlite_app).session() as session:
        episodes = queries.all_episodes(session)
        state = queries.site_state(session)
    return episodes, FeedChannel.from_config(seeded_sqlite_app.config), state.changed_at


@pytest.mark.benchmark(group="feed")
def test_feed_cold_render_webapp(benchmark, feed_data):
    body = benchmark(render_feed, *feed_data)
    assert body.count(b"<item>") == 600


@pytest.mark.benchmark(group="feed")
def test_feed_cold_render_feedgen(benchmark, feed_data):
    body = benchmark(render_with_feedgen, *feed_data)
    assert body.count(b"<item>") == 600


@pytest.mark.benchmark(group="feed")
def test_feed_get_from_cache(benchmark, seeded_sqlite_app):
    client = seeded_sqlite_app.test_client()
    client.get("/episodes/rss")  # fill the cache
    response = benchmark(client.get, "/episodes/rss")
    assert response.status_code == 200 and len(response.data) > 700_000


@pytest.mark.benchmark(group="feed")
def test_feed_conditional_get_304(benchmark, seeded_sqlite_app):
    client = seeded_sqlite_app.test_client()
    etag = client.get("/episodes/rss").headers["ETag"]
    response = benchmark(client.get, "/episodes/rss", headers={"If-None-Match": etag})
    assert response.status_code == 304
