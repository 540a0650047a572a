"""The HTML pages and /health, on both backends."""

from __future__ import annotations

import html
import json
import re
import uuid
from html.parser import HTMLParser

import pytest

from tests.conftest import traced_growth
from webapp.db import get_database, queries
from webapp.db.seed import generate_episode
from webapp.show_notes import SHOW_NOTES_KEPT_BYTES


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


def test_editing_show_notes_again_and_again_keeps_their_cleaned_versions_bounded(app, client):
    """A worker lives an hour while editors keep saving: the versions of the notes an edit
    replaced, kept as written and as cleaned, must hold no more than the bound in bytes."""
    notes = "<p>" + "word " * 10_000 + "</p>"  # 50 KB: notes have no length limit
    run = uuid.uuid4().hex  # the cache is the process's: no version another test saved
    slug = generate_episode(3)["slug"]

    def edit_and_fetch(i: int) -> None:
        with get_database(app).session() as session:
            session.execute(
                "UPDATE episodes SET show_notes = %s WHERE number = 3",
                (f"<p>Edit {i} {run}</p>{notes}",),
            )
        assert f"<p>Edit {i} {run}</p>".encode() in client.get(f"/episodes/3/{slug}").data

    edit_and_fetch(0)
    grown = traced_growth(lambda: [edit_and_fetch(i) for i in range(1, 101)])
    # Kept by count alone, the 100 versions were 100 x 50 KB twice: 10 MB.
    assert grown < SHOW_NOTES_KEPT_BYTES + 500_000, grown


#: What HTML forbids in a document (controls but whitespace, noncharacters), as an editor's
#: paste or an import can put it in any text column; U+202E (an RTL override) is allowed.
FORBIDDEN_IN_HTML = "\x01\x0b\x1b\x7f\x85\x9f\ufdd0\ufffe\uffff\U0001fffe"


def test_text_that_html_forbids_is_shown_as_u_fffd_on_every_page(app, client):
    """Each forbidden code point in any printed column made the page invalid HTML (the Nu
    Html Checker: "Forbidden code point U+0001"): it is shown as U+FFFD, one for one."""
    text = f"a{FORBIDDEN_IN_HTML}b\u202e"
    with get_database(app).session() as session:
        session.execute(
            "UPDATE episodes SET title = %s, summary = %s, show_notes = %s, transcript = %s"
            " WHERE number = 12",
            (text, text, f"<p>{text}</p>", text),
        )
        session.execute(
            "UPDATE guests SET name = %s WHERE id IN (SELECT guest_id FROM episode_guests"
            " WHERE episode_id = (SELECT id FROM episodes WHERE number = 12))",
            (text,),
        )
        session.execute(
            "UPDATE episode_chapters SET chapters = %s"
            " WHERE episode_id = (SELECT id FROM episodes WHERE number = 12)",
            (json.dumps([{"startTime": 0, "title": text}]),),
        )
    shown = "a" + "\ufffd" * len(FORBIDDEN_IN_HTML) + "b\u202e"
    slug = generate_episode(12)["slug"]
    for url in ("/episodes/", f"/episodes/12/{slug}", "/episodes/12/transcript.html"):
        body = client.get(url).get_data(as_text=True)
        assert not set(FORBIDDEN_IN_HTML) & set(body), url
        assert shown in body, url
    page = client.get(f"/episodes/12/{slug}").get_data(as_text=True)
    # The title, the summary (twice), the notes, the transcript, a guest, the chapter.
    assert page.count(shown) >= 7
    # The API and its JSON keep the text as stored: JSON can carry it.
    assert client.get("/api/episodes/12").get_json()["title"] == text


def test_an_audio_url_is_a_valid_and_harmless_link(app, client):
    """The audio URL is printed in ``src`` and ``href``: a space or a quote made the page
    invalid HTML, and ``javascript:`` a link that ran script (the show notes are cleaned of
    that; the audio URL was printed as it is)."""
    slug = generate_episode(7)["slug"]
    odd = 'https://media.example.com/a b"c<d>{e}|\x01é.mp3'
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET audio_url = %s WHERE number = 7", (odd,))
    body = client.get(f"/episodes/7/{slug}").get_data(as_text=True)
    encoded = "https://media.example.com/a%20b%22c%3Cd%3E%7Be%7D%7C%01é.mp3"
    assert f'src="{encoded}"' in body and f'href="{encoded}"' in body
    # What a browser reads as a valid URL leads where it did: an import's trailing newline
    # and a leading space are not part of it, nor a tab inside; "\\" is "/" in http(s); an
    # IPv6 address keeps its brackets.
    for url, printed in (
        (" https://media.example.com/ep7.mp3\n", "https://media.example.com/ep7.mp3"),
        ("https://media.example.com/e\tp7.mp3", "https://media.example.com/ep7.mp3"),
        ("https://media.example.com\\ep7.mp3", "https://media.example.com/ep7.mp3"),
        ("http://[2001:db8::1]:8080/[7].mp3", "http://[2001:db8::1]:8080/%5B7%5D.mp3"),
    ):
        with get_database(app).session() as session:
            session.execute("UPDATE episodes SET audio_url = %s WHERE number = 7", (url,))
        body = client.get(f"/episodes/7/{slug}").get_data(as_text=True)
        assert f'src="{printed}"' in body and f'href="{printed}"' in body, url
    for scheme in (
        "javascript:alert(1)",
        " JavaScript:alert(1)",
        "java\tscript:alert(1)",
        "data:,x",
    ):
        with get_database(app).session() as session:
            session.execute("UPDATE episodes SET audio_url = %s WHERE number = 7", (scheme,))
        body = client.get(f"/episodes/7/{slug}").get_data(as_text=True)
        assert 'src="#"' in body and 'href="#">Download' in body, scheme
        assert "script:" not in body.lower() and "data:" not in body, scheme


@pytest.mark.parametrize(
    "slug, href",
    [
        ("a b", "a%20b"),
        ('q"u<o>te{s}|^`\\', "q%22u%3Co%3Ete%7Bs%7D%7C%5E%60%5C"),
        ("tab\there", "tab%09here"),
        ("new\nline", "new%0Aline"),
    ],
)
def test_an_episode_link_is_a_valid_url_whatever_the_slug(app, client, slug, href):
    """An editor's slug is printed in every list's ``href`` and in the redirect's Location:
    a space or a quote made each page invalid HTML, a tab a link browsers strip to another
    URL (redirected back: a loop), and a newline a 500 with a traceback ("Header values
    must not contain newline characters")."""
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET slug = %s WHERE number = 7", (slug,))
    path = f"/episodes/7/{href}"
    for url in ("/episodes/", "/episodes/7/transcript.html"):
        assert f'href="{path}"' in client.get(url).get_data(as_text=True), url
    redirect = client.get("/episodes/7")
    assert redirect.status_code == 301 and redirect.headers["Location"] == path
    # The link leads to the page: the server decodes it back to the slug.
    assert client.get(path).status_code == 200


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
