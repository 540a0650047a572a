"""The podcast RSS feed: valid for real readers, cheap for the pollers."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime

import feedparser
import pytest

import webapp.blueprints.feed as feed_module
from webapp.blueprints.feed import FeedCache
from webapp.db import get_database
from webapp.seed import generate_episode, seed

ITUNES = "{http://www.itunes.com/dtds/podcast-1.0.dtd}"


@pytest.fixture
def render_count(monkeypatch):
    """Counts real renders of the feed (the renderer still runs)."""
    calls = []
    real = feed_module.render_current_feed

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feed_module, "render_current_feed", counting)
    return calls


def test_feed_parses_in_a_real_feed_reader_with_every_item(client):
    response = client.get("/episodes/rss")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/rss+xml; charset=utf-8"
    parsed = feedparser.parse(response.data)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "rss20"
    assert parsed.feed.title == "Talk Fast Python"
    assert len(parsed.entries) == 30
    for entry in parsed.entries:
        number = int(entry.itunes_episode)
        expected = generate_episode(number)
        assert entry.id == expected["guid"]
        assert entry.guidislink is False
        assert entry.title == expected["title"]
        assert entry.link == f"https://podcast.test/episodes/{number}/{expected['slug']}"
        (enclosure,) = entry.enclosures
        assert enclosure.href == expected["audio_url"]
        assert int(enclosure.length) == expected["audio_bytes"]
        assert enclosure.type == "audio/mpeg"
        published = datetime(*entry.published_parsed[:6], tzinfo=UTC)
        assert published == expected["published_at"]
        assert entry.itunes_duration == str(expected["duration_seconds"])
        # The HTML show notes survive escaping intact.
        assert entry.summary == expected["show_notes"]


def test_feed_has_what_apple_podcasts_requires(client):
    root = ElementTree.fromstring(client.get("/episodes/rss").data)
    channel = root.find("channel")
    for tag in ["title", "link", "description", "language"]:
        assert channel.findtext(tag)
    assert channel.find(f"{ITUNES}image").get("href") == "https://podcast.test/static/cover.png"
    assert channel.find(f"{ITUNES}category").get("text") == "Technology"
    assert channel.findtext(f"{ITUNES}explicit") == "false"
    assert channel.findtext(f"{ITUNES}author")
    assert channel.find(f"{ITUNES}owner").findtext(f"{ITUNES}email")
    self_link = channel.find("{http://www.w3.org/2005/Atom}link")
    assert (self_link.get("rel"), self_link.get("href")) == (
        "self",
        "https://podcast.test/episodes/rss",
    )
    items = channel.findall("item")
    assert [int(item.findtext(f"{ITUNES}episode")) for item in items] == list(range(30, 0, -1))
    assert all(item.findtext(f"{ITUNES}explicit") in {"true", "false"} for item in items)
    # Show notes travel as escaped HTML: parsed, the text holds the tags.
    assert all(item.findtext("description").startswith("<p>") for item in items)


def test_full_seed_feed_is_a_long_running_shows_size(empty_app):
    with get_database(empty_app).session() as session:
        seed(session, 600)
    body = empty_app.test_client().get("/episodes/rss").data
    assert len(body) >= 700_000
    assert len(ElementTree.fromstring(body).findall("channel/item")) == 600


def test_conditional_get_answers_304_without_rendering(client, render_count):
    first = client.get("/episodes/rss")
    assert len(render_count) == 1
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and "W/" not in etag

    for headers in (
        {"If-None-Match": etag},
        {"If-Modified-Since": last_modified},
        {"If-None-Match": f'"other", {etag}'},
    ):
        response = client.get("/episodes/rss", headers=headers)
        assert response.status_code == 304
        assert response.data == b""
        assert response.headers["ETag"] == etag
    assert len(render_count) == 1

    # A validator that does not match gets the full feed, from the cache.
    response = client.get("/episodes/rss", headers={"If-None-Match": '"stale"'})
    assert response.status_code == 200 and response.data == first.data
    assert len(render_count) == 1


def test_a_change_in_the_data_changes_validators_and_content(app, client, render_count):
    first = client.get("/episodes/rss")
    with get_database(app).session() as session:
        session.execute(
            "UPDATE episodes SET title = %s WHERE number = %s", ("A brand new title", 5)
        )
    second = client.get("/episodes/rss", headers={"If-None-Match": first.headers["ETag"]})
    assert second.status_code == 200
    assert second.headers["ETag"] != first.headers["ETag"]
    assert b"A brand new title" in second.data and b"A brand new title" not in first.data
    assert len(render_count) == 2


def test_validators_are_derived_from_data_not_from_the_process(app, tmp_path, client):
    from tests.conftest import make_app

    other_process = make_app(app.config["DATABASE_URL"], tmp_path / "other")
    a = client.get("/episodes/rss")
    b = other_process.test_client().get("/episodes/rss")
    assert (a.headers["ETag"], a.headers["Last-Modified"]) == (
        b.headers["ETag"],
        b.headers["Last-Modified"],
    )
    assert a.data == b.data


def test_head_gets_headers_only(client):
    response = client.head("/episodes/rss")
    assert response.status_code == 200
    assert response.data == b""
    assert int(response.headers["Content-Length"]) > 10_000


def test_cache_serves_the_rendered_bytes_until_the_key_changes():
    cache, renders = FeedCache(), []

    def render():
        renders.append(1)
        return b"feed-%d" % len(renders)

    assert cache.get_or_render("a", render) == b"feed-1"
    assert cache.get_or_render("a", render) == b"feed-1"
    assert cache.get_or_render("b", render) == b"feed-2"
    assert len(renders) == 2
