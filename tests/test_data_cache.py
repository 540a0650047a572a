"""Answers kept until the data changes (webapp.data_cache)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import traced_growth
from webapp.data_cache import MAX_BYTES, DataCache
from webapp.db import get_database
from webapp.models import SiteState

AT = datetime(2026, 1, 1, tzinfo=UTC)


def state(version: int, changed_at: datetime = AT) -> SiteState:
    return SiteState(version=version, changed_at=changed_at, episode_count=3)


def test_a_value_is_made_once_per_state_of_the_data():
    cache, made = DataCache(), []

    def make(value: str):
        return lambda: made.append(value) or value

    assert cache.get_or_make(state(1), "k", make("a")) == "a"
    assert cache.get_or_make(state(1), "k", make("b")) == "a"
    assert cache.get_or_make(state(2), "k", make("c")) == "c"  # the data changed
    # The same version with another changed_at: a database made again from scratch.
    assert cache.get_or_make(state(2, AT.replace(year=2027)), "k", make("d")) == "d"
    assert made == ["a", "c", "d"] and len(cache) == 1


def test_nothing_is_kept_when_making_fails():
    cache = DataCache()
    with pytest.raises(LookupError):
        cache.get_or_make(state(1), "k", lambda: (_ for _ in ()).throw(LookupError()))
    assert len(cache) == 0 and cache.get_or_make(state(1), "k", lambda: "made") == "made"


def test_the_least_recently_used_goes_first():
    cache = DataCache(max_entries=2)
    cache.get_or_make(state(1), "a", lambda: "1")
    cache.get_or_make(state(1), "b", lambda: "2")
    cache.get_or_make(state(1), "a", lambda: "0")  # used: b is now the oldest
    cache.get_or_make(state(1), "c", lambda: "3")
    assert len(cache) == 2
    assert cache.get_or_make(state(1), "a", lambda: "-1") == "1"
    assert cache.get_or_make(state(1), "b", lambda: "-2") == "-2"


def test_what_is_kept_is_bounded_in_bytes():
    cache = DataCache(max_bytes=10, size=len)
    for key in "abcd":
        cache.get_or_make(state(1), key, lambda: b"xxxx")
    assert cache.kept_bytes == 8 and len(cache) == 2  # a and b went, oldest first
    assert cache.get_or_make(state(1), "c", lambda: b"made") == b"xxxx"
    # Larger than the whole bound: answered, not kept, and nothing else goes for it.
    assert cache.get_or_make(state(1), "big", lambda: b"y" * 11) == b"y" * 11
    assert cache.kept_bytes == 8 and len(cache) == 2


def test_a_value_is_counted_by_the_memory_it_takes():
    """A str of one astral character is stored at 4 bytes per character: counted as such."""
    cache = DataCache()
    cache.get_or_make(state(1), "ascii", lambda: "x" * 1000)
    ascii_bytes = cache.kept_bytes
    cache.get_or_make(state(1), "emoji", lambda: "x" * 999 + "\N{SNAKE}")
    assert cache.kept_bytes - ascii_bytes > 4000 > ascii_bytes > 1000


def test_a_client_walking_every_api_page_size_stays_within_the_bound(app, client):
    # The app's cache made beforehand with a small bound, as a large site fills the real one.
    cache = app.extensions["data_cache.api_pages"] = DataCache(
        max_bytes=20_000, size=lambda page: len(page.body)
    )
    first = {n: client.get(f"/api/episodes?per_page={n}").data for n in range(1, 101)}
    assert 0 < cache.kept_bytes <= 20_000 and len(cache) < 100
    # Evicted or kept, every page is still what it was.
    assert all(client.get(f"/api/episodes?per_page={n}").data == first[n] for n in first)


def test_search_pages_of_astral_text_hold_no_more_memory_than_the_bound(app, client):
    """A worker lives an hour and anyone may search: the search pages it keeps must hold at
    most MAX_BYTES of memory, though a search text with an emoji (in the page) makes CPython
    store the page's str at 4 bytes per character."""
    stripes = "stripes " * 250  # long titles, so that every page is large
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = 'Zebra ' || number || %s", (stripes,))
    texts = [f"zebra {chr(0x1F400 + i)}" for i in range(121)]  # distinct emoji, one word
    first = client.get("/search", query_string={"q": texts[0]})  # fragments rendered, kept
    assert first.get_data(as_text=True).count("Zebra ") == 30 and texts[0] in first.text

    def search_each() -> None:
        for text in texts[1:]:
            assert client.get("/search", query_string={"q": text}).status_code == 200

    grown = traced_growth(search_each)
    # Kept as str, the pages (~70,000 characters each, 4 bytes per character) filled the
    # bound in characters, four times MAX_BYTES in memory. The keys and the pages' nodes may
    # stay beside MAX_BYTES.
    assert grown < MAX_BYTES + 500_000, grown
    cache = app.extensions["data_cache.search_pages"]
    assert MAX_BYTES - 100_000 < cache.kept_bytes <= MAX_BYTES
    # Kept or not, a page is the same.
    assert client.get("/search", query_string={"q": texts[0]}).data == first.data


def test_a_kept_api_page_answers_until_the_data_changes(app, client):
    first = client.get("/api/episodes?per_page=5")
    assert client.get("/api/episodes?per_page=5").data == first.data
    assert (
        client.get(
            "/api/episodes?per_page=5", headers={"If-None-Match": first.headers["ETag"]}
        ).status_code
        == 304
    )
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = %s WHERE number = %s", ("Changed", 29))
    changed = client.get("/api/episodes?per_page=5")
    assert changed.headers["ETag"] != first.headers["ETag"]
    assert changed.get_json()["episodes"][1]["title"] == "Changed"


def test_a_kept_search_page_answers_until_the_data_changes(app, client):
    before = client.get("/search?q=zebra").get_data(as_text=True)
    assert "No episode matches" in before
    assert client.get("/search?q=zebra").get_data(as_text=True) == before
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = %s WHERE number = %s", ("Zebra talk", 12))
    after = client.get("/search?q=zebra").get_data(as_text=True)
    assert "1 episode match" in after and "Zebra talk" in after


def test_search_pages_are_not_kept_while_templates_reload(app, client):
    app.jinja_env.auto_reload = True
    client.get("/search?q=python")
    assert "data_cache.search_pages" not in app.extensions
    app.jinja_env.auto_reload = False
    client.get("/search?q=python")
    assert len(app.extensions["data_cache.search_pages"]) == 1


def test_a_search_page_is_the_same_whoever_asks(app, client):
    """What is kept is served to everyone: nothing of the request but its text may be in it."""
    app.jinja_env.auto_reload = True  # rendered afresh each time, not kept
    plain = client.get("/search?q=python").data
    other = client.get(
        "/search?q=python",
        headers={
            "Host": "evil.example",
            "Cookie": "session=secret-of-someone; _profile=x",
            "Accept-Language": "fr",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "Referer": "https://evil.example/",
        },
    ).data
    assert other == plain
    assert b"evil.example" not in other and b"secret-of-someone" not in other
