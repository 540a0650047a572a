"""The podcast RSS feed: valid for real readers, cheap for the pollers."""

from __future__ import annotations

import gzip
import io
import re
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import feedparser
import podcastparser
import pytest
from werkzeug.http import http_date, parse_date

import webapp.blueprints.feed as feed_module
from tests.conftest import make_app, traced_growth
from webapp.blueprints.feed import FeedCache, RenderedFeed
from webapp.db import get_database, get_session, queries
from webapp.db.seed import seed
from webapp.freeze import freeze
from webapp.models import Episode
from webapp.rss import APPLE_TAGS, FORMAT_CHANGED_AT, FeedChannel, modified_at
from webapp.settings import podcast_guid

ITUNES = "{http://www.itunes.com/dtds/podcast-1.0.dtd}"
PODCAST_NAMESPACE_URI = "https://podcastindex.org/namespace/1.0"
PODCAST = "{" + PODCAST_NAMESPACE_URI + "}"
#: The Podcast Namespace's UUID for podcast:guid, as its spec gives it.
PODCAST_NAMESPACE = uuid.UUID("ead4c236-bf58-58c6-a2c6-a6b28d128cb6")


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


def database_episodes(app) -> list[Episode]:
    with app.app_context():
        return queries.all_episodes(get_session())


def apple_notes(show_notes: str) -> str:
    """The seed's show notes as Apple's tag set has them: its headings become paragraphs,
    its bold text plain (worked out here independently of webapp.rss)."""
    assert set(re.findall(r"</?([a-z0-9]+)", show_notes)) <= {"p", "h3", "ul", "li", "a", "strong"}
    return re.sub(r"</?strong>", "", re.sub(r"<(/?)h3>", r"<\1p>", show_notes))


def test_feedparser_reads_every_field_as_the_database_has_it(app, client):
    response = client.get("/episodes/rss")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/rss+xml; charset=utf-8"
    parsed = feedparser.parse(response.data)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "rss20"
    feed = parsed.feed
    assert (feed.title, feed.link, feed.language) == (
        "Talk Fast Python",
        "https://podcast.test/",
        "en-us",
    )
    assert feed.image.href == "https://podcast.test/artwork.png"
    assert feed.podcast_guid == str(uuid.uuid5(PODCAST_NAMESPACE, "podcast.test/episodes/rss"))
    assert feed.podcast_locked == {"owner": "host@example.com"}
    assert feed.subtitle == FeedChannel.description
    assert (feed.author, feed.rights, feed.itunes_type) == (
        "Talk Fast Python",
        "© Talk Fast Python",
        "episodic",
    )
    assert feed.publisher_detail == {"name": "Talk Fast Python", "email": "host@example.com"}
    assert [tag.term for tag in feed.tags] == ["Technology"]
    assert feed.podcast_person == {"role": "host"}  # feedparser keeps a person's attributes
    assert feed.ttl == "60"
    with get_database(app).session() as session:
        changed_at = queries.site_state(session).changed_at
    # lastBuildDate: when the data last changed, to the second.
    assert datetime(*feed.updated_parsed[:6], tzinfo=UTC) == modified_at(changed_at)
    episodes = database_episodes(app)
    assert len(parsed.entries) == len(episodes) == 30
    for entry, episode in zip(parsed.entries, episodes, strict=True):
        site_path = f"https://podcast.test/episodes/{episode.number}"
        assert int(entry.itunes_episode) == episode.number
        assert entry.id == episode.guid and entry.guidislink is False
        assert entry.title == entry.itunes_title == episode.title
        assert entry.link == f"https://podcast.test{episode.path}"
        (enclosure,) = entry.enclosures
        assert (enclosure.href, int(enclosure.length), enclosure.type) == (
            episode.audio_url,
            episode.audio_bytes,
            "audio/mpeg",
        )
        assert datetime(*entry.published_parsed[:6], tzinfo=UTC) == episode.published_at
        assert entry.itunes_duration == str(episode.duration_seconds)
        assert entry.itunes_episodetype == "full"
        # feedparser keeps the attributes of an item's last person: its last guest.
        assert entry.podcast_person == {"role": "guest"} and episode.guests
        assert entry.summary == apple_notes(episode.show_notes)
        assert entry.podcast_transcript == {
            "url": f"{site_path}/transcript.html",
            "type": "text/html",
        }
        if episode.chapters:
            assert entry.podcast_chapters == {
                "url": f"{site_path}/chapters.json",
                "type": "application/json+chapters",
            }
        else:
            assert "podcast_chapters" not in entry


def test_gpodders_podcastparser_reads_every_field_as_the_database_has_it(app, client, monkeypatch):
    # podcastparser 0.6.11 knows the namespace only by its old GitHub address, which
    # the namespace's spec says clients must treat as identical to the one we declare.
    monkeypatch.setitem(podcastparser.Namespace.NAMESPACES, PODCAST_NAMESPACE_URI, "podcast")
    body = client.get("/episodes/rss").data
    parsed = podcastparser.parse("https://podcast.test/episodes/rss", io.BytesIO(body))
    assert parsed["title"] == "Talk Fast Python" and parsed["link"] == "https://podcast.test/"
    assert parsed["cover_url"] == "https://podcast.test/artwork.png"
    assert parsed["itunes_owner"] == {"name": "Talk Fast Python", "email": "host@example.com"}
    assert parsed["import_prohibited"] is True  # podcast:locked yes
    assert (parsed["explicit"], parsed["type"]) == (False, "episodic")
    assert (parsed["description"], parsed["language"]) == (FeedChannel.description, "en-us")
    assert (parsed["itunes_author"], parsed["itunes_categories"]) == (
        "Talk Fast Python",
        [["Technology"]],
    )
    episodes = database_episodes(app)
    assert len(parsed["episodes"]) == len(episodes)
    for item, episode in zip(parsed["episodes"], episodes, strict=True):
        site_path = f"https://podcast.test/episodes/{episode.number}"
        assert (item["number"], item["guid"], item["title"]) == (
            episode.number,
            episode.guid,
            episode.title,
        )
        assert item["link"] == f"https://podcast.test{episode.path}"
        assert item["published"] == int(episode.published_at.timestamp())
        assert item["total_time"] == episode.duration_seconds
        assert item["enclosures"] == [
            {"url": episode.audio_url, "file_size": episode.audio_bytes, "mime_type": "audio/mpeg"}
        ]
        assert (item["type"], item["explicit"]) == ("full", episode.explicit)
        assert item["description_html"] == apple_notes(episode.show_notes)
        assert item["transcript_url"] == f"{site_path}/transcript.html"
        assert item.get("chapters_json_url") == (
            f"{site_path}/chapters.json" if episode.chapters else None
        )
        # The item's people replace the channel's, so the host is named again.
        people = [(person["name"], person["role"]) for person in item["persons"]]
        assert people == [("Morgan Reyes", "host")] + [
            (guest.name, "guest") for guest in episode.guests
        ]


def test_show_notes_carry_only_apples_tags_whatever_an_editor_wrote(app, client):
    hostile = (
        "<h2>Intro</h2><p>Fine <b>bold</b> &amp; <em>more</em>]]><script>alert(1)</script></p>"
        '<style>p{}</style><!-- a comment --><img src="x.png" onerror="alert(2)">'
        '<a href="javascript:alert(3)" onclick="x()">bad link</a>'
        '<ol><li><a href="https://example.com/?a=1&amp;b=2" target="_blank">good</a></li></ol>'
        "<div>unclosed <p>paragraph"
    )
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET show_notes = %s WHERE number = 3", (hostile,))
    body = client.get("/episodes/rss").data
    item = next(
        item
        for item in ElementTree.fromstring(body).iter("item")
        if item.findtext(f"{ITUNES}episode") == "3"
    )
    notes = item.findtext("description")  # well-formed XML: the CDATA was not broken out of
    assert set(re.findall(r"</?([a-zA-Z0-9]+)", notes)) <= APPLE_TAGS
    assert "alert" not in notes and "onclick" not in notes and "target" not in notes
    assert "]]&gt;" in notes and "Fine bold &amp; more" in notes
    assert '<a href="https://example.com/?a=1&amp;b=2">good</a>' in notes
    assert "<p>Intro</p>" in notes and "<p>paragraph</p>" in notes
    assert not feedparser.parse(body).bozo


def test_editing_show_notes_again_and_again_keeps_no_notes_an_edit_replaced(app, client):
    """A worker lives an hour while editors keep editing: what it keeps to render the next
    feed must be the current feed's notes, not every version an editor ever saved."""
    notes = "<p>" + "word " * 10_000 + "</p>"  # 50 KB: notes have no length limit

    def edit_and_fetch(i: int) -> None:
        with get_database(app).session() as session:
            session.execute(
                "UPDATE episodes SET show_notes = %s WHERE number = 3", (f"<p>Edit {i}</p>{notes}",)
            )
        response = client.get("/episodes/rss")
        assert f"Edit {i}".encode() in response.data

    edit_and_fetch(0)  # the feed and what it keeps exist once
    grown = traced_growth(lambda: [edit_and_fetch(i) for i in range(1, 41)])
    # Kept, the 40 replaced versions would be 40 x 50 KB twice (as written, and cleaned):
    # 4 MB. What may stay is one feed (the last) and its notes.
    assert grown < 1_000_000, grown


def test_characters_xml_forbids_in_any_field_leave_the_feed_well_formed(app, client, tmp_path):
    """One editor's vertical tab (a word processor's line break) must not make the whole
    feed unreadable to every podcast app: what XML 1.0 forbids becomes a space."""
    with get_database(app).session() as session:
        session.execute(
            "UPDATE episodes SET title = %s, show_notes = %s, audio_url = %s, guid = %s"
            " WHERE number = 3",
            (
                "Line\x0bbreak\x0cpage\x01",
                "<p>Notes\x0bwith\x1fcontrols\x08 and \ufffe\uffff</p>",
                "https://cdn.podcast.test/3\x0b.mp3",
                "guid-3\x1f",
            ),
        )
        session.execute(
            "UPDATE guests SET name = %s WHERE id = (SELECT guest_id FROM episode_guests"
            " WHERE position = 0 AND episode_id = (SELECT id FROM episodes WHERE number = 3))",
            ("Guest\x0bName",),
        )
    build = freeze(app, tmp_path / "build").destination
    feeds = {
        "served": client.get("/episodes/rss").data,
        "frozen": (build / "episodes/rss.xml").read_bytes(),
        "frozen .gz": gzip.decompress((build / "episodes/rss.xml.gz").read_bytes()),
    }
    for name, body in feeds.items():
        parsed = feedparser.parse(body)
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        item = next(
            item
            for item in ElementTree.fromstring(body).iter("item")
            if item.findtext(f"{ITUNES}episode") == "3"
        )
        assert item.findtext("title") == "Line break page ", name
        assert item.findtext("description") == "<p>Notes with controls  and   </p>", name
        assert item.find("enclosure").get("url") == "https://cdn.podcast.test/3 .mp3", name
        assert item.findtext("guid") == "guid-3 ", name
        guests = [person.text for person in item.iter(f"{PODCAST}person")]
        assert "Guest Name" in guests, name


def test_feed_has_what_apple_podcasts_requires(client):
    root = ElementTree.fromstring(client.get("/episodes/rss").data)
    channel = root.find("channel")
    for tag in ["title", "link", "description", "language", "lastBuildDate"]:
        assert channel.findtext(tag)
    assert channel.find(f"{ITUNES}image").get("href") == "https://podcast.test/artwork.png"
    assert channel.find(f"{ITUNES}category").get("text") == "Technology"
    assert channel.findtext(f"{ITUNES}explicit") == "false"
    assert channel.findtext(f"{ITUNES}author")
    assert channel.find(f"{ITUNES}owner").findtext(f"{ITUNES}email")
    self_link = channel.find("{http://www.w3.org/2005/Atom}link")
    assert (self_link.get("rel"), self_link.get("href")) == (
        "self",
        "https://podcast.test/episodes/rss",
    )
    host = channel.find(f"{PODCAST}person")
    assert (host.get("role"), host.text) == ("host", "Morgan Reyes")
    items = channel.findall("item")
    assert [int(item.findtext(f"{ITUNES}episode")) for item in items] == list(range(30, 0, -1))
    assert all(item.findtext(f"{ITUNES}explicit") in {"true", "false"} for item in items)
    assert all(item.findtext(f"{ITUNES}title") == item.findtext("title") for item in items)
    # Show notes travel as HTML in CDATA: parsed, the text holds the tags.
    assert all(item.findtext("description").startswith("<p>") for item in items)
    assert b"<description><![CDATA[<p>" in client.get("/episodes/rss").data


def test_podcast_guid_is_the_uuid5_of_the_feed_url_and_a_setting(tmp_path, app):
    # The namespace's own examples.
    assert podcast_guid("https://mp3s.nashownotes.com/pc20rss.xml") == (
        "917393e3-1b1e-5cef-ace4-edaa54e1f810"
    )
    assert podcast_guid("http://podnews.net/rss/") == "9b024349-ccf0-5f69-a609-6b82873eab3c"
    assert app.config["SITE_PODCAST_GUID"] == podcast_guid("https://podcast.test/episodes/rss")
    # Once the show moves, the guid set before the move stays.
    moved = make_app(
        app.config["DATABASE_URL"],
        tmp_path / "moved",
        SITE_URL="https://new-host.example",
        SITE_PODCAST_GUID=app.config["SITE_PODCAST_GUID"],
    )
    body = moved.test_client().get("/episodes/rss").data
    assert (
        ElementTree.fromstring(body).findtext(f"channel/{PODCAST}guid")
        == (app.config["SITE_PODCAST_GUID"])
    )


def test_full_seed_feed_is_a_long_running_shows_size(empty_app):
    with get_database(empty_app).session() as session:
        seed(session, 600)
    body = empty_app.test_client().get("/episodes/rss").data
    assert len(body) >= 700_000
    assert len(ElementTree.fromstring(body).findall("channel/item")) == 600


def test_conditional_get_answers_304_without_rendering_again(client, render_count):
    first = client.get("/episodes/rss")
    assert len(render_count) == 1
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and "W/" not in etag

    for headers in (
        {"If-None-Match": etag},
        {"If-Modified-Since": last_modified},
        {"If-None-Match": f'"other", {etag}'},
        {"If-None-Match": f"W/{etag}"},  # nginx weakens the ETags of what it gzips itself
        {"If-None-Match": etag, "If-Modified-Since": last_modified},
        {"If-None-Match": "*"},
    ):
        response = client.get("/episodes/rss", headers=headers)
        assert response.status_code == 304
        assert response.data == b""
        assert response.headers["ETag"] == etag
    assert len(render_count) == 1

    # A validator that does not match gets the full feed, from the cache. As nginx judges
    # it: every validator sent must match, and If-Modified-Since exactly.
    earlier = http_date(parse_date(last_modified) - timedelta(seconds=1))
    later = http_date(parse_date(last_modified) + timedelta(seconds=1))
    for headers in (
        {"If-None-Match": '"stale"'},
        {"If-None-Match": '"stale"', "If-Modified-Since": last_modified},
        {"If-None-Match": etag, "If-Modified-Since": earlier},
        {"If-Modified-Since": earlier},
        {"If-Modified-Since": later},
        {"If-Modified-Since": "not a date"},
    ):
        response = client.get("/episodes/rss", headers=headers)
        assert response.status_code == 200 and response.data == first.data, headers
    assert len(render_count) == 1


def test_a_failed_if_match_or_if_unmodified_since_answers_412_as_nginx_does(client):
    """RFC 9110 13.2.2: these preconditions are judged before If-None-Match, on a GET too,
    and nginx judges them for the frozen file: the app gives the same answer."""
    first = client.get("/episodes/rss")
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    earlier = http_date(parse_date(last_modified) - timedelta(seconds=1))
    later = http_date(parse_date(last_modified) + timedelta(seconds=1))
    for headers in (
        {"If-Match": '"other"'},
        {"If-Match": f"W/{etag}"},  # If-Match compares strongly
        {"If-Match": '"other"', "If-None-Match": etag},  # before If-None-Match's 304
        {"If-Unmodified-Since": earlier},
    ):
        for method in (client.get, client.head):
            response = method("/episodes/rss", headers=headers)
            assert response.status_code == 412, (method, headers)
    for headers in (
        {"If-Match": etag},
        {"If-Match": f'"other", {etag}'},
        {"If-Match": "*"},
        {"If-Unmodified-Since": last_modified},
        {"If-Unmodified-Since": later},
        {"If-Unmodified-Since": "not a date"},  # an invalid date is ignored (RFC 9110 13.1.4)
    ):
        response = client.get("/episodes/rss", headers=headers)
        assert response.status_code == 200 and response.data == first.data, headers


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
    first, second = (1, datetime(2026, 1, 1, tzinfo=UTC)), (2, datetime(2026, 1, 2, tzinfo=UTC))

    def render():
        renders.append(1)
        return RenderedFeed([b"feed-", b"%d" % len(renders)])

    assert cache.get_or_render(first, render).body == b"feed-1"
    assert cache.get_or_render(first, render).body == b"feed-1"
    assert cache.get_or_render(second, render).body == b"feed-2"
    assert len(renders) == 2


class _StoredBetweenReads(FeedCache):
    """A FeedCache in which another feed is stored right after ``get`` first reads the cache's
    fields: the interleaving of a poll with a render of the next version, made certain."""

    between: Callable[[], None] | None = None

    def __getattribute__(self, name: str) -> object:
        value = super().__getattribute__(name)
        between = super().__getattribute__("between")
        if between is not None and name.startswith("_") and name != "_lock":
            self.between = None
            between()
        return value


def test_a_poll_never_gets_the_previous_feed_under_the_next_versions_key():
    """The view sends the validators of the state it read with the feed kept for that state:
    the previous feed under the next key would be answered 304 to its holder until the data
    changes again. The feed and its key are read as one, whatever is stored in between."""
    cache = _StoredBetweenReads()
    first, second = (1, datetime(2026, 1, 1, tzinfo=UTC)), (2, datetime(2026, 1, 2, tzinfo=UTC))
    cache.get_or_render(first, lambda: RenderedFeed([b"feed-1"]))
    cache.between = lambda: cache.get_or_render(second, lambda: RenderedFeed([b"feed-2"]))
    found = cache.get(second)
    assert cache.between is None  # the other render did happen between the reads
    assert found is None or found.body == b"feed-2"
    assert cache.get_or_render(second, lambda: RenderedFeed([b"again"])).body == b"feed-2"


def test_the_apps_validators_are_nginxs_for_the_frozen_file(app, client, tmp_path):
    """nginx's ETag for a file is "<mtime hex>-<size hex>", for the .gz gzip_static sends too:
    the app's answer for each encoding has exactly the validators of the file nginx sends."""
    build = freeze(app, tmp_path / "build").destination
    for encoding, name in [(None, "episodes/rss.xml"), ("gzip", "episodes/rss.xml.gz")]:
        headers = {"Accept-Encoding": encoding} if encoding else {}
        response = client.get("/episodes/rss", headers=headers)
        frozen = build / name
        mtime = frozen.stat().st_mtime_ns // 1_000_000_000
        assert response.data == frozen.read_bytes(), name
        assert response.headers["ETag"] == f'"{mtime:x}-{frozen.stat().st_size:x}"', name
        assert parse_date(response.headers["Last-Modified"]).timestamp() == mtime, name
        assert response.headers.get("Content-Encoding") == encoding
        assert response.headers["Vary"] == "Accept-Encoding"
    # The time is the data's: a rebuild with nothing changed, or later, keeps it.
    with get_database(app).session() as session:
        changed_at = queries.site_state(session).changed_at
    assert mtime == int(max(changed_at, FORMAT_CHANGED_AT).timestamp())


@pytest.mark.parametrize(
    "accept_encoding, gzipped",
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("*", False),
        ("br", False),
        # Content-codings are case-insensitive (RFC 9110 8.4.1), and nginx sends the .gz for these.
        ("GZIP", True),
        ("Gzip, deflate", True),
        ("deflate, GZIP;q=0", False),
    ],
)
def test_gzip_is_sent_when_nginx_would_send_the_gz_file(client, accept_encoding, gzipped):
    response = client.get("/episodes/rss", headers={"Accept-Encoding": accept_encoding})
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped
    body = gzip.decompress(response.data) if gzipped else response.data
    assert body == client.get("/episodes/rss").data
