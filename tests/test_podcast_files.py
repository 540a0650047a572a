"""What the feed links besides the audio: the artwork, each episode's transcript and chapters.

Each is read back the way a podcast app or a web player on another origin
reads it, and compared with the database.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3

import psycopg2
import pytest
from PIL import Image

from tests.conftest import make_app
from tests.test_pages import assert_valid_html
from webapp.artwork import cover_art
from webapp.db import get_database, get_session, queries
from webapp.db.seed import generate_episode

#: An episode with chapters and one from before the show marked them.
WITH_CHAPTERS, WITHOUT_CHAPTERS = 12, 7


def episode(app, number):
    with app.app_context():
        return queries.episode_by_number(get_session(), number)


def test_artwork_is_3000_px_square_rgb_png_under_512_kb(client):
    response = client.get("/artwork.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert len(response.data) < 512 * 1024
    image = Image.open(io.BytesIO(response.data))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (3000, 3000))
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert (
        client.get("/artwork.png", headers={"If-None-Match": response.headers["ETag"]}).status_code
        == 304
    )


def test_artwork_is_drawn_from_the_title_the_same_every_time():
    assert cover_art("Talk Fast Python") == cover_art("Talk Fast Python")
    assert cover_art("Talk Fast Python") != cover_art("Talk Faster Python")
    # A long title still fits: smaller type, never a crash or a cut word.
    long_title = cover_art(
        "The Extraordinarily Long-Winded Weekly Conversation About Python Web Performance"
    )
    assert Image.open(io.BytesIO(long_title)).size == (3000, 3000)


def test_transcript_is_an_html_document_of_the_episodes_transcript(app, client):
    expected = episode(app, WITHOUT_CHAPTERS)
    response = client.get(f"/episodes/{WITHOUT_CHAPTERS}/transcript.html")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert_valid_html(response.data)
    paragraphs = re.findall(r"<p>(.*?)</p>", response.get_data(as_text=True), re.S)
    assert paragraphs == [expected.transcript]
    assert f'href="{expected.path}"' in response.get_data(as_text=True)


def test_chapters_are_the_json_chapters_format_of_the_database_rows(app, client):
    response = client.get(f"/episodes/{WITH_CHAPTERS}/chapters.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json+chapters"
    document = json.loads(response.data)
    assert document["version"] == "1.2.0"
    assert document["title"] == episode(app, WITH_CHAPTERS).title
    assert document["podcastName"] == "Talk Fast Python"
    chapters = [(chapter["startTime"], chapter["title"]) for chapter in document["chapters"]]
    assert chapters == generate_episode(WITH_CHAPTERS)["chapters"]
    starts = [start for start, _ in chapters]
    assert starts == sorted(starts) and starts[0] == 0  # ascending, as the format requires


@pytest.mark.parametrize(
    "path",
    [
        f"/episodes/{WITHOUT_CHAPTERS}/chapters.json",
        "/episodes/31/chapters.json",
        "/episodes/31/transcript.html",
        "/episodes/99999999999/transcript.html",
    ],
)
def test_what_does_not_exist_is_a_404(client, path):
    assert client.get(path).status_code == 404


def test_an_episode_without_transcript_text_has_no_transcript(app, client):
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET transcript = '' WHERE number = 5")
    assert client.get("/episodes/5/transcript.html").status_code == 404
    assert b"/episodes/5/transcript.html" not in client.get("/episodes/rss").data


@pytest.mark.parametrize(
    "path",
    [f"/episodes/{WITH_CHAPTERS}/transcript.html", f"/episodes/{WITH_CHAPTERS}/chapters.json"],
)
def test_players_on_other_origins_may_read_them_and_revalidate(client, path):
    response = client.get(path, headers={"Origin": "https://player.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" not in response.headers.get("Vary", "")
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    etag = response.headers["ETag"]
    assert not etag.startswith("W/")
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


@pytest.mark.parametrize(
    "path",
    [
        f"/episodes/{WITH_CHAPTERS}/transcript.html",
        f"/episodes/{WITH_CHAPTERS}/chapters.json",
        "/artwork.png",
    ],
)
def test_if_match_is_evaluated_as_rfc_9110_says(client, path):
    """As nginx judges it in front: "*" or the ETag is the answer (If-None-Match then applies);
    any other a 412 page, not the answer's own body under a 412."""
    response = client.get(path)
    etag = response.headers["ETag"]
    for if_match in ["*", etag]:
        matched = client.get(path, headers={"If-Match": if_match})
        assert (matched.status_code, matched.data) == (200, response.data), if_match
        both = client.get(path, headers={"If-Match": if_match, "If-None-Match": etag})
        assert both.status_code == 304, if_match
    refused = client.get(path, headers={"If-Match": '"x"'})
    assert refused.status_code == 412 and refused.mimetype == "text/html"
    assert response.data not in refused.data


def test_an_edit_changes_the_chapters_and_their_etag(app, client):
    path = f"/episodes/{WITH_CHAPTERS}/chapters.json"
    before = client.get(path)
    with get_database(app).session() as session:
        session.execute(
            "UPDATE episode_chapters SET chapters = %s"
            " WHERE episode_id = (SELECT id FROM episodes WHERE number = %s)",
            ('[{"startTime": 0, "title": "Hello <again> & welcome"}]', WITH_CHAPTERS),
        )
    after = client.get(path, headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200
    assert json.loads(after.data)["chapters"] == [
        {"startTime": 0, "title": "Hello <again> & welcome"}
    ]


def test_chapters_without_a_title_or_at_a_fraction_of_a_second_are_served(app, client):
    """The JSON chapters format makes ``title`` optional and ``startTime`` a float:
    such chapters made the chapters file and the episode's page answer 500."""
    with get_database(app).session() as session:
        session.execute(
            "UPDATE episode_chapters SET chapters = %s"
            " WHERE episode_id = (SELECT id FROM episodes WHERE number = %s)",
            ('[{"startTime": 0}, {"startTime": 61.75, "title": "Later"}]', WITH_CHAPTERS),
        )
    response = client.get(f"/episodes/{WITH_CHAPTERS}/chapters.json")
    assert response.status_code == 200
    assert json.loads(response.data)["chapters"] == [
        {"startTime": 0, "title": ""},
        {"startTime": 61, "title": "Later"},
    ]
    page = client.get(episode(app, WITH_CHAPTERS).path)
    assert page.status_code == 200 and b'<time datetime="PT61S">1:01</time> Later' in page.data


def test_the_artwork_follows_the_show_title(app, tmp_path):
    renamed = make_app(app.config["DATABASE_URL"], tmp_path / "renamed", SITE_TITLE="Another Show")
    assert renamed.test_client().get("/artwork.png").data == cover_art("Another Show")


@pytest.mark.parametrize("chapters", ["not JSON", '{"startTime": 0, "title": "Intro"}', "[1, 2"])
def test_the_database_refuses_chapters_that_are_not_a_json_array(app, chapters):
    with pytest.raises((sqlite3.Error, psycopg2.Error)), get_database(app).session() as session:
        session.execute(
            "UPDATE episode_chapters SET chapters = %s"
            " WHERE episode_id = (SELECT id FROM episodes WHERE number = %s)",
            (chapters, WITH_CHAPTERS),
        )
    assert json.loads(episode(app, WITH_CHAPTERS).chapters_json)  # unchanged
