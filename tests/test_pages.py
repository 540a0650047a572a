"""The HTML pages and /health, on both backends."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from webapp.db import get_database, queries
from webapp.db.seed import generate_episode


class TagBalance(HTMLParser):
    """Checks what an HTML5 validator would catch first: unclosed or stray tags."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def assert_valid_html(body: bytes) -> None:
    text = body.decode("utf-8")
    assert text.startswith('<!doctype html>\n<html lang="en">')
    parser = TagBalance()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []


def test_home_lists_the_latest_episodes_newest_first(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert_valid_html(response.data)
    body = response.get_data(as_text=True)
    positions = [body.index(f"/episodes/{n}/") for n in range(30, 20, -1)]
    assert positions == sorted(positions)
    assert "/episodes/20/" not in body


def test_catalogue_lists_every_episode(client):
    body = client.get("/episodes/").get_data(as_text=True)
    assert "All 30 episodes" in body
    for number in range(1, 31):
        assert f'href="/episodes/{number}/{generate_episode(number)["slug"]}"' in body


def test_episode_page_shows_notes_guests_and_audio(client):
    expected = generate_episode(7)
    response = client.get(f"/episodes/7/{expected['slug']}")
    assert response.status_code == 200
    assert_valid_html(response.data)
    body = response.get_data(as_text=True)
    assert expected["show_notes"] in body  # editors' HTML is rendered, not escaped
    assert expected["audio_url"] in body
    assert "<title>#7 " in body
    assert "Chapters" not in body  # episode 7 has none


#: What an imported feed or a pasted page can put in show notes, and must not reach a browser.
HOSTILE_NOTES = (
    '<p onclick="steal()">Intro <b>bold</b></p><script>alert(1)</script>'
    '<img src="x" onerror="alert(2)"><a href="javascript:alert(3)">link</a>'
    '<style>body{display:none}</style><iframe src="https://evil.test/"></iframe>'
    '<a href="https://example.com/" target="_blank">good</a><!-- <script>x</script> -->'
)


def test_show_notes_never_carry_script_to_the_page_or_the_api(app, client):
    """Show notes are printed as HTML: what could run or restyle the page is cleaned away,
    on the page (where nginx's CSP may not be in front) and in the API alike."""
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET show_notes = %s WHERE number = 7", (HOSTILE_NOTES,))
    slug = generate_episode(7)["slug"]
    printed = {
        "page": client.get(f"/episodes/7/{slug}").get_data(as_text=True),
        "api item": client.get("/api/episodes/7").get_json()["show_notes_html"],
    }
    for where, text in printed.items():
        for hostile in ("<script", "onclick", "onerror", "javascript:", "<style", "<iframe"):
            assert hostile not in text, (where, hostile)
        assert "target=" not in text and "<!--" not in text, where
        assert '<p>Intro <b>bold</b></p><img src="x">' in text, where
        assert '<a href="https://example.com/">good</a>' in text, where
    assert_valid_html(printed["page"].encode())


def test_episode_page_lists_its_chapters(client):
    expected = generate_episode(12)
    body = client.get(f"/episodes/12/{expected['slug']}").get_data(as_text=True)
    listed = re.findall(r'<li><time datetime="PT(\d+)S">[0-9:]+</time> ([^<]+)</li>', body)
    assert [(int(start), html.unescape(title)) for start, title in listed] == expected["chapters"]


@pytest.mark.parametrize("suffix", ["", "/wrong-slug", "/"])
def test_non_canonical_episode_urls_redirect_permanently(client, suffix):
    response = client.get(f"/episodes/7{suffix}")
    if suffix == "/":
        # An empty slug is not a route; it is not a page either.
        assert response.status_code in {301, 404}
        return
    assert response.status_code == 301
    assert response.headers["Location"] == f"/episodes/7/{generate_episode(7)['slug']}"


@pytest.mark.parametrize(
    "path", ["/episodes/31/x", "/episodes/999999999999", "/episodes/-1/x", "/episodes/abc", "/nope"]
)
def test_unknown_pages_are_html_404s(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.content_type == "text/html; charset=utf-8"
    assert_valid_html(response.data)
    assert b"Not Found" in response.data


def test_search_finds_episodes_by_words_from_title_and_summary(app, client):
    with app.app_context():
        database = get_database()
        with database.session() as session:
            episode = queries.episode_by_number(session, 12)
    word = episode.title.split()[0]
    body = client.get(f"/search?q={word}").get_data(as_text=True)
    assert f"/episodes/12/{episode.slug}" in body
    assert client.get("/search?q=zzzqqqnothing").status_code == 200
    assert "No episode matches" in client.get("/search?q=zzzqqqnothing").get_data(as_text=True)


def test_empty_search_shows_the_form(client):
    response = client.get("/search")
    assert response.status_code == 200
    assert b'name="q"' in response.data
    # A visible submit button: a keyboard or voice user need not guess that Enter submits.
    form = re.search(r'<form class="search".*?</form>', response.get_data(as_text=True), re.S)
    assert '<button type="submit">Search</button>' in form[0]


def test_health_reports_database_and_count(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "episodes": 30}


def test_static_stylesheet(client):
    response = client.get("/static/style.css")
    assert response.status_code == 200 and response.mimetype == "text/css"


def test_unexpected_errors_are_a_500_page_without_a_traceback(app, caplog):
    def broken():
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", "broken", broken)
    app.add_url_rule("/api/broken", "api_broken", broken)
    client = app.test_client()
    page = client.get("/broken")
    assert page.status_code == 500
    assert b"Something went wrong" in page.data and b"secret internals" not in page.data
    assert b"Traceback" not in page.data
    api = client.get("/api/broken")
    assert api.status_code == 500 and api.get_json()["status"] == 500
    assert "secret internals" in caplog.text  # logged for us, not shown to them


def test_a_500_is_logged_on_one_line_whatever_the_path(app, caplog):
    @app.before_request
    def broken() -> None:  # before routing: no route matches a line break
        raise RuntimeError("secret internals")

    response = app.test_client().get("/broken/x%0d%0aFORGED%1b[31m")

    assert response.status_code == 500
    (record,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert record.getMessage() == "Exception on /broken/x%0D%0AFORGED%1B%5B31m [GET]"
    assert record.exc_info is not None  # the traceback follows, as Flask logs it
