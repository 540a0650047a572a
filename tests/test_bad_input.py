"""Hostile and malformed input: a clear 4xx, never a 500, and the data untouched."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule

from webapp.db import get_database, queries
from webapp.db.seed import generate_episode
from webapp.params import CanonicalInteger


def data_version(app) -> tuple[int, int]:
    with get_database(app).session() as session:
        state = queries.site_state(session)
    return state.version, state.episode_count


NASTY_SEARCHES = [
    '"unbalanced',
    "100%",
    "%%%",
    "'; DROP TABLE episodes; --",
    "title:python OR 1=1",
    "NEAR(a b)",
    "a AND NOT b",
    "*",
    "^python",
    "python*",
    "\\",
    "\x00nul",
    "emoji 🐍 snake",
    "&<>",
    "(((",
    "-flask",
    "' OR '1'='1",
    "ＰＹＴＨＯＮ",
]


@pytest.mark.parametrize("query", NASTY_SEARCHES)
def test_search_survives_any_syntax(app, client, query):
    before = data_version(app)
    response = client.get("/search", query_string={"q": query})
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    assert data_version(app) == before


#: What HTML allows in no document (its "control" and "noncharacter" code points, ASCII
#: whitespace aside): the Nu Html Checker rejects a page holding one.
NOT_IN_HTML = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(chr(plane | low) for plane in range(0, 0x110000, 0x10000) for low in (0xFFFE, 0xFFFF))
    + "]"
)


@pytest.mark.parametrize(
    "raw", ["q=%00", "q=python%01%1b%7fflask", "q=%C2%80%C2%9F", "q=%EF%BF%BE", "q=%F4%8F%BF%BF"]
)
def test_search_text_html_forbids_is_shown_replaced_and_the_page_stays_valid(client, raw):
    # Each reaches the page's <title>, its search box and its heading: a page holding a
    # control character or a noncharacter is not HTML. Shown as U+FFFD, as a browser would.
    response = client.get(f"/search?{raw}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert NOT_IN_HTML.search(page) is None
    assert "\ufffd" in page


def test_search_text_html_forbids_still_separates_words(client):
    first, second = queries.search_terms(generate_episode(12)["title"])[:2]
    between = client.get("/search", query_string={"q": f"{first}\x00{second}"})
    spaced = client.get("/search", query_string={"q": f"{first} {second}"})
    assert between.data.count(b"<li>") == spaced.data.count(b"<li>") > 0


def test_overlong_search_is_a_400_with_a_reason(client):
    response = client.get("/search", query_string={"q": "python " * 1500})  # ~10 KB
    assert response.status_code == 400
    assert b"limited to 200 characters" in response.data


@pytest.mark.parametrize("raw", ["q=%ff%fe", "q=%c3%28", "page=%80&q=x", "q=\xff"])
def test_query_strings_that_are_not_utf8_are_400s(client, raw):
    environ = {"QUERY_STRING": raw.encode("latin-1").decode("latin-1")}
    response = client.get("/search", environ_overrides=environ)
    assert response.status_code == 400
    assert b"not valid UTF-8" in response.data


@pytest.mark.parametrize(
    "path",
    [
        "/episodes/99999999999999999999999",
        "/episodes/1e3",
        "/episodes/%00",
        "/api/episodes/-5",
        "/episodes/../../etc/passwd",
        # A number as the site never writes it: one resource would have many URLs.
        "/api/episodes/010",
        "/api/episodes/\uff11\uff10",  # full-width 10
        "/api/episodes/\u0661\u0660",  # Arabic-Indic 10
        "/episodes/\uff11\uff10/transcript.html",
        "/episodes/01/transcript.html",  # episode 1 has one: 200 as /episodes/1/transcript.html
        "/episodes/01",
        "/episodes/\uff11",
    ],
)
def test_odd_paths_are_404s(client, path):
    assert client.get(path).status_code == 404


def test_numbers_in_paths_as_the_site_writes_them_still_match(client):
    assert client.get("/api/episodes/1").status_code == 200
    assert client.get("/api/episodes/0").status_code == 404  # no episode 0, by the database


@pytest.mark.parametrize(
    ("path", "number"), [("/5", 5), ("/-5", -5), ("/0", 0), ("/-05", None), ("/\uff15", None)]
)
def test_a_signed_number_in_a_route_matches_as_written(path, number):
    # The app's int converter replaces Werkzeug's for every route: int(signed=True) included.
    rules = Map([Rule("/<int(signed=True):n>", endpoint="n")], converters={"int": CanonicalInteger})
    adapter = rules.bind("podcast.test")
    if number is None:
        with pytest.raises(NotFound):
            adapter.match(path)
    else:
        assert adapter.match(path) == ("n", {"n": number})


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.text(max_size=200))
def test_search_never_fails_whatever_the_text(app, client, query):
    response = client.get("/search", query_string={"q": query})
    assert response.status_code == 200


def test_nothing_changes_after_a_barrage(app, client):
    before = data_version(app)
    for query in NASTY_SEARCHES:
        client.get("/api/episodes", query_string={"page": query, "per_page": query})
        client.get("/search", query_string={"q": query})
    assert data_version(app) == before


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "podcast..test", "."])
@pytest.mark.parametrize("path", ["/", "/nope", "/episodes/1"])
def test_a_host_that_is_not_a_domain_name_is_a_400_page(client, host, path):
    # Werkzeug cannot route a Host it cannot IDNA-encode (a label over 63 bytes; nginx passes
    # those), so the request has no URL adapter and the error page cannot build its links.
    response = client.get(path, headers={"Host": host})
    assert response.status_code == 400
    assert b"Bad Request" in response.data and b"Traceback" not in response.data


def test_a_host_that_is_not_a_domain_name_is_a_400_problem_on_the_api(client):
    response = client.get("/api/episodes", headers={"Host": "a" * 64 + ".example"})
    assert response.status_code == 400
    assert response.get_json()["status"] == 400
