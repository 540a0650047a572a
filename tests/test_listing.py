"""Pages of episodes composed from a frame and per-episode fragments (webapp.listing).

The frame comes from the template itself, split where its ``items`` block
is; fragments are kept per episode revision and shared by every page that
lists episodes. A kept fragment must never outlive its episode's revision:
after any change, each page is byte for byte what an app with nothing kept
answers.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from flask import Flask, url_for
from jinja2 import DictLoader

from tests.test_freeze import live_twin
from webapp.db import backends as database_module
from webapp.db import get_database
from webapp.listing import FragmentCache, Fragments, Frame, compose, template_frame
from webapp.models import EpisodeRevision, episode_path

LISTS = [
    "/",
    "/episodes/",
    "/search?q=python",
    "/search?q=flask",
    "/api/episodes?per_page=100",
    "/api/episodes?page=2&per_page=7",
    # An episode's own answer, kept per revision too.
    "/api/episodes/28",
    "/api/episodes/27",
    "/api/episodes/29",
]


def execute(app: Flask, statement: str, params: tuple = ()) -> None:
    with get_database(app).session() as session:
        session.execute(statement, params)


@pytest.fixture
def templates(app: Flask) -> Flask:
    app.jinja_env.loader = DictLoader(
        {
            "page.html": "<h1>{{ title }}</h1><ol>{% block items %}{% endblock %}\n</ol><p>end</p>",
            "maybe.html": "<p>{% if count %}<ol>{% block items %}{% endblock %}</ol>{% else %}none"
            "{% endif %}</p>",
            "twice.html": "{% for _ in [1, 2] %}{% block items %}{% endblock %}{% endfor %}",
        }
    )
    return app


def test_a_frame_is_its_template_split_where_the_items_block_is(templates):
    with templates.test_request_context():
        frame = template_frame("page.html", title="<b>")
        assert frame == Frame("<h1>&lt;b&gt;</h1><ol>", "\n</ol><p>end</p>")
        assert compose(frame, ["<li>1</li>", "<li>2</li>"]) == (
            "<h1>&lt;b&gt;</h1><ol><li>1</li><li>2</li>\n</ol><p>end</p>"
        )
        # No text of the page can pass for the block: a NUL, say (shown as U+FFFD: HTML
        # forbids it).
        assert template_frame("page.html", title="\0").before == "<h1>\ufffd</h1><ol>"


def test_a_frame_that_does_not_reach_its_items_block_is_all_before(templates):
    with templates.test_request_context():
        assert template_frame("maybe.html", count=0) == Frame("<p>none</p>", "")
        assert template_frame("maybe.html", count=2) == Frame("<p><ol>", "</ol></p>")


def test_a_template_that_renders_its_items_block_twice_is_refused(templates):
    with templates.test_request_context(), pytest.raises(ValueError, match="more than once"):
        template_frame("twice.html")


def counting_fragments(calls: list[int]) -> Fragments:
    def render(episodes):
        calls.extend(episode.number for episode in episodes)
        return [f"<{episode.number}:{episode.title}>" for episode in episodes]

    return Fragments("counting", render)


class Loaded:
    def __init__(self, number: int, title: str) -> None:
        self.number, self.title = number, title


def test_fragments_are_kept_per_revision_and_rendered_again_when_it_moves(app):
    calls: list[int] = []
    fragments = counting_fragments(calls)
    titles = {1: "one", 2: "two", 3: "three"}

    def load(numbers):
        return [Loaded(number, titles[number]) for number in numbers if number in titles]

    entries = [
        EpisodeRevision(3, "c", 30),
        EpisodeRevision(2, "b", 20),
        EpisodeRevision(1, "a", 10),
    ]
    with app.app_context():
        assert fragments.for_entries(entries, load) == ["<3:three>", "<2:two>", "<1:one>"]
        assert fragments.for_entries(entries, load) == ["<3:three>", "<2:two>", "<1:one>"]
        assert calls == [3, 2, 1]  # the second time, all were kept

        titles[2] = "TWO"
        moved = [entries[0], EpisodeRevision(2, "b", 21), entries[2]]
        assert fragments.for_entries(moved, load) == ["<3:three>", "<2:TWO>", "<1:one>"]
        assert calls == [3, 2, 1, 2]

        del titles[3]  # deleted after the list was read: left out
        gone = [EpisodeRevision(3, "c", 31), *moved[1:]]
        assert fragments.for_entries(gone, load) == ["<2:TWO>", "<1:one>"]

        # Without a revision (written with the triggers off), nothing is kept.
        unrevised = [EpisodeRevision(1, "a", None)]
        fragments.for_entries(unrevised, load)
        fragments.for_entries(unrevised, load)
        assert calls[-2:] == [1, 1]


def test_nothing_is_kept_while_templates_reload(app):
    calls: list[int] = []
    fragments = counting_fragments(calls)
    app.jinja_env.auto_reload = True
    with app.app_context():
        for _ in range(2):
            fragments.for_entries([EpisodeRevision(1, "a", 10)], lambda n: [Loaded(1, "one")])
    assert calls == [1, 1]


def test_a_fragment_cache_past_its_bytes_starts_over():
    empty = sys.getsizeof("")  # what a str takes besides its characters
    cache = FragmentCache(max_bytes=10 + 2 * empty)
    cache.put(1, 10, "12345")
    cache.put(1, 11, "123456")  # replaces: 6 bytes kept, not 11
    cache.put(2, 20, "1234")
    assert len(cache) == 2
    cache.put(3, 30, "1")
    assert len(cache) == 1 and cache.get(3, 30) == "1" and cache.get(1, 11) is None


def test_a_fragment_of_astral_text_counts_the_memory_it_takes():
    """One emoji in a title makes CPython store the fragment at 4 bytes per character."""
    cache = FragmentCache(max_bytes=20_000)
    for number in range(1, 6):  # 5,000 characters, 20,000 bytes and more
        cache.put(number, 1, "x" * 999 + "\N{SNAKE}")
    kept = [number for number in range(1, 6) if cache.get(number, 1) is not None]
    assert sum(sys.getsizeof(cache.get(number, 1)) for number in kept) <= 20_000
    assert kept == [5]


def test_a_full_fragment_cache_starts_over():
    cache = FragmentCache(max_entries=2)
    cache.put(1, 10, "one")
    cache.put(2, 20, "two")
    cache.put(2, 21, "two again")  # a new revision replaces the old
    assert len(cache) == 2 and cache.get(2, 21) == "two again" and cache.get(2, 20) is None
    cache.put(3, 30, "three")
    assert len(cache) == 1 and cache.get(3, 30) == "three" and cache.get(1, 10) is None


@pytest.mark.parametrize(
    "change",
    [
        ("UPDATE episodes SET title = %s WHERE number = %s", ('Python <edited> & "more"', 28)),
        ("UPDATE episodes SET duration_seconds = %s WHERE number = %s", (4000, 25)),
        (
            "UPDATE guests SET name = %s WHERE id IN"
            " (SELECT guest_id FROM episode_guests WHERE episode_id ="
            " (SELECT id FROM episodes WHERE number = 27))",
            ("Renamed Guest",),
        ),
        ("DELETE FROM episodes WHERE number = %s", (29,)),
    ],
)
def test_after_a_change_every_list_is_what_an_app_with_nothing_kept_serves(app, change):
    client = app.test_client()
    before = {url: client.get(url).data for url in LISTS}  # every fragment kept
    execute(app, *change)

    fresh = live_twin(app).test_client()
    after = {url: client.get(url).data for url in LISTS}
    assert after == {url: fresh.get(url).data for url in LISTS}
    for url in ["/", "/episodes/", "/api/episodes?per_page=100"]:  # each shows the change
        assert after[url] != before[url], url


def test_the_api_list_is_the_json_flask_would_write_for_it(client):
    body = client.get("/api/episodes?per_page=3").data
    data = json.loads(body)
    assert body == (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every statement the data layer runs."""
    issued: list[str] = []
    real_execute = database_module.Connection._execute

    def recording(self, statement, params):
        issued.append(statement)
        return real_execute(self, statement, params)

    monkeypatch.setattr(database_module.Connection, "_execute", recording)
    return issued


#: A statement that reads an episode's show notes, transcript or chapters (not only whether
#: it has them).
READS_CONTENT = re.compile(r"\be\.show_notes\b|\be\.transcript\s*(,|FROM\b)|\bchapters\s+FROM\b")


@pytest.mark.parametrize("url", ["/search?q=python", "/episodes/", "/api/episodes"])
def test_lists_read_no_show_notes_transcripts_or_chapters(client, statements, url):
    client.get(url)  # nothing kept: every listed episode is read
    assert statements and not [s for s in statements if READS_CONTENT.search(s)]
    read = len(statements)
    client.get("/api/episodes/7")  # which an episode's own answer does
    assert [s for s in statements[read:] if READS_CONTENT.search(s)]


# The API's page is kept whole until the data changes: it reads site_state only.
@pytest.mark.parametrize(
    "url, queries",
    [("/search?q=python", 1), ("/", 1), ("/api/episodes", 1), ("/api/episodes/7", 1)],
)
def test_with_every_fragment_kept_a_list_reads_only_which_episodes_it_shows(
    client, statements, url, queries
):
    client.get(url)
    statements.clear()
    client.get(url)
    assert len(statements) == queries, statements
    assert all("guests" not in statement for statement in statements)


def test_episode_links_are_the_routes_urls(app):
    with app.test_request_context():
        for number, slug in [(5, "a-slug"), (2**31 - 1, "x")]:
            assert episode_path(number, slug) == url_for("pages.episode", number=number, slug=slug)
        assert url_for("pages.episode", number=5) == "/episodes/5"


def test_fragments_escape_what_editors_type(app, client):
    execute(app, "UPDATE episodes SET title = %s WHERE number = 30", ('<script>"x"</script>',))
    for url in ["/", "/episodes/"]:
        body = client.get(url).get_data(as_text=True)
        assert "<script>" not in body and "&lt;script&gt;&#34;x&#34;&lt;/script&gt;" in body
