"""The JSON API: pagination and its links, items, strict parameters, caching, errors and CORS."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from request_profiler import make_token

from tests.conftest import make_app
from webapp.db import get_database
from webapp.db.seed import generate_episode

SITE = "https://podcast.test"


def link_header(response) -> dict[str, str]:
    """RFC 8288 ``Link: <url>; rel="next", …`` as rel -> url."""
    return {
        rel: url
        for url, rel in re.findall(r'<([^>]*)>\s*;\s*rel="([^"]+)"', response.headers["Link"])
    }


def page_url(page: int, per_page: int) -> str:
    return f"{SITE}/api/episodes?page={page}&per_page={per_page}"


def test_first_page_newest_first_with_absolute_links(client):
    response = client.get("/api/episodes?per_page=10")
    data = response.get_json()
    assert [e["number"] for e in data["episodes"]] == list(range(30, 20, -1))
    assert (data["page"], data["per_page"], data["pages"], data["total"]) == (1, 10, 3, 30)
    assert data["links"] == {
        "self": page_url(1, 10),
        "first": page_url(1, 10),
        "prev": None,
        "next": page_url(2, 10),
        "last": page_url(3, 10),
    }
    assert link_header(response) == {
        "first": page_url(1, 10),
        "next": page_url(2, 10),
        "last": page_url(3, 10),
    }


def test_a_middle_page_links_both_ways(client):
    response = client.get("/api/episodes?page=2&per_page=10")
    assert link_header(response) == {
        "first": page_url(1, 10),
        "prev": page_url(1, 10),
        "next": page_url(3, 10),
        "last": page_url(3, 10),
    }
    assert response.get_json()["links"]["self"] == page_url(2, 10)


def test_following_the_link_header_covers_every_episode_once(client):
    numbers = []
    url = f"{SITE}/api/episodes?per_page=7"
    while url:
        response = client.get(url.removeprefix(SITE))
        numbers += [e["number"] for e in response.get_json()["episodes"]]
        url = link_header(response).get("next")
    assert numbers == list(range(30, 0, -1))


def test_episode_item_fields(client):
    expected = generate_episode(12)
    data = client.get("/api/episodes/12").get_json()
    assert data["number"] == 12 and data["title"] == expected["title"]
    assert data["url"] == f"{SITE}/episodes/12/{expected['slug']}"
    assert data["audio"] == {
        "url": expected["audio_url"],
        "bytes": expected["audio_bytes"],
        "type": "audio/mpeg",
    }
    assert data["show_notes_html"] == expected["show_notes"]
    assert data["published_at"] == expected["published_at"].isoformat()
    assert [g["slug"] for g in data["guests"]] == expected["guests"]
    assert data["transcript_url"] == f"{SITE}/episodes/12/transcript.html"
    assert data["chapters_url"] == f"{SITE}/episodes/12/chapters.json"
    assert client.get("/api/episodes/7").get_json()["chapters_url"] is None  # before chapters


def test_empty_catalogue_has_one_empty_page(empty_app):
    data = empty_app.test_client().get("/api/episodes").get_json()
    assert data["episodes"] == [] and data["total"] == 0 and data["pages"] == 1
    assert data["links"]["next"] is None and data["links"]["last"] == page_url(1, 20)


# --- Caching ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/episodes?page=2&per_page=5", "/api/episodes/3", "/api/openapi.json"]
)
def test_answers_carry_a_strong_etag_and_a_lifetime_and_revalidate(client, path):
    response = client.get(path)
    etag = response.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{20,}"', etag)  # strong: no W/
    assert response.headers["Cache-Control"] == "public, max-age=60"
    for validators in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'}):
        again = client.get(path, headers=validators)
        assert again.status_code == 304 and again.data == b""
        assert again.headers["ETag"] == etag
    assert client.get(path, headers={"If-None-Match": '"stale"'}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/episodes?page=2&per_page=5", "/api/episodes/3", "/api/openapi.json"]
)
def test_if_match_is_evaluated_as_rfc_9110_says(client, path):
    """If-Match first, with strong comparison, "*" for any current answer; false, a 412 problem
    (not the answer's own body under a 412); true, If-None-Match is then evaluated as usual."""
    etag = client.get(path).headers["ETag"]
    for if_match in ["*", etag, f'"x", {etag}']:
        response = client.get(path, headers={"If-Match": if_match})
        assert response.status_code == 200 and response.headers["ETag"] == etag, if_match
        both = client.get(path, headers={"If-Match": if_match, "If-None-Match": etag})
        assert both.status_code == 304, if_match
    for if_match in ['"x"', f"W/{etag}"]:  # W/: If-Match compares strongly
        response = client.get(path, headers={"If-Match": if_match})
        assert_problem(response, 412, "Precondition Failed")
        assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_etag_changes_with_the_data(app, client):
    before = client.get("/api/episodes/3")
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = %s WHERE number = 3", ("Renamed",))
    after = client.get("/api/episodes/3", headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.get_json()["title"] == "Renamed"
    assert after.headers["ETag"] != before.headers["ETag"]


# --- Errors: RFC 9457 problem details ----------------------------------------------


def assert_problem(response, status: int, title: str, detail: str | None = None) -> None:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "about:blank"
    assert (problem["status"], problem["title"]) == (status, title)
    assert problem["detail"] and (detail is None or detail in problem["detail"])
    assert "Cache-Control" not in response.headers and "ETag" not in response.headers


@pytest.mark.parametrize(
    "query, reason",
    [
        ("page=0", "'page' must be from 1"),
        ("page=-1", "'page' must be a whole number"),
        ("page=abc", "'page' must be a whole number"),
        ("page=1.5", "'page' must be a whole number"),
        ("page=99999999999999999999", "'page' must be a whole number"),
        ("per_page=0", "'per_page' must be from 1 to 100"),
        ("per_page=101", "'per_page' must be from 1 to 100"),
        ("page=1&page=2", "'page' was given 2 times"),
        ("page=%ff", "not valid UTF-8"),
    ],
)
def test_malformed_parameters_are_400_problems_with_a_reason(client, query, reason):
    if "per_page" not in query:
        query += "&per_page=10"
    assert_problem(client.get(f"/api/episodes?{query}"), 400, "Bad Request", reason)


def test_a_page_past_the_last_is_a_404_problem(client):
    response = client.get("/api/episodes?page=4&per_page=10")
    assert_problem(response, 404, "Not Found", "There is no page 4 at per_page=10: the last is 3.")


@pytest.mark.parametrize(
    "path", ["/api/episodes/31", "/api/episodes/0", "/api/nothing", "/api/episodes/x"]
)
def test_unknown_api_urls_are_404_problems(client, path):
    assert_problem(client.get(path), 404, "Not Found")


def test_wrong_method_is_a_405_problem_with_allow(client):
    response = client.post("/api/episodes")
    assert_problem(response, 405, "Method Not Allowed")
    assert "GET" in response.headers["Allow"]


def test_health_errors_are_problems_too(client):
    assert_problem(client.post("/health"), 405, "Method Not Allowed")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page=st.one_of(st.integers(-(10**12), 10**12).map(str), st.text(max_size=30)),
    per_page=st.one_of(st.integers(-(10**6), 10**6).map(str), st.text(max_size=30)),
)
def test_any_parameters_get_a_page_or_a_4xx_problem_never_a_500(client, page, per_page):
    response = client.get("/api/episodes", query_string={"page": page, "per_page": per_page})
    assert response.status_code in {200, 400, 404}
    data = response.get_json()
    if response.status_code == 200:
        assert 1 <= len(data["episodes"]) <= int(per_page)
        assert data["page"] == int(page)
    else:
        assert response.mimetype == "application/problem+json" and data["detail"]


# --- CORS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, status", [("/api/episodes", 200), ("/api/episodes/3", 200), ("/api/nothing", 404)]
)
def test_any_origin_may_read_the_api_errors_included(client, path, status):
    response = client.get(path, headers={"Origin": "https://app.example"})
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {
        name.strip() for name in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"ETag", "Link"} <= exposed
    # The same answer for every origin: no Vary: Origin to split caches.
    assert "Origin" not in response.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_preflight_is_answered(client):
    response = client.options(
        "/api/episodes",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert "If-None-Match" in response.headers["Access-Control-Allow-Headers"]
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize("path", ["/api/episodes", "/api/episodes/3", "/api/openapi.json"])
@pytest.mark.parametrize("preflight", [True, False])
def test_options_is_a_204_with_allow_and_no_html(client, path, preflight):
    """OPTIONS, a CORS preflight or not, says which methods the resource takes, with no content
    and so no Content-Type: not the empty text/html 200 Flask answers by default."""
    headers = {"Origin": "https://app.example"}
    if preflight:
        headers["Access-Control-Request-Method"] = "GET"
    response = client.options(path, headers=headers)
    assert (response.status_code, response.data) == (204, b"")
    assert "Content-Type" not in response.headers
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "path", ["/", "/episodes/", "/episodes/7", "/search", "/health", "/static/style.css"]
)
def test_options_on_a_page_is_a_204_with_allow_and_no_html_either(client, path):
    """Flask's default answer, an empty 200 labelled text/html, is not a page: what the
    resource takes, with no content, as on the paths other origins read, without CORS."""
    response = client.options(path)
    assert (response.status_code, response.data) == (204, b"")
    assert "Content-Type" not in response.headers
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("path", ["/", "/episodes/", "/search?q=python", "/health"])
def test_pages_allow_no_other_origin(client, path):
    response = client.get(path, headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(
        path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_the_profiler_allows_no_other_origin(tmp_path):
    secret = "cors-test-profiler-secret-of-32-bytes-at-least"
    app = make_app(
        f"sqlite:///{tmp_path}/profiled.sqlite3",
        tmp_path,
        PROFILER_SECRET=secret,
        PROFILER_DIR=str(tmp_path / "profiles"),
    )
    client = app.test_client()
    token = {"X-Profile-Token": make_token(secret, 60), "Origin": "https://app.example"}
    assert client.get("/api/episodes", headers=token).headers["Access-Control-Allow-Origin"] == "*"
    for path in ["/_profiler/", "/api/episodes?_profile_view=inline"]:
        response = client.get(path, headers=token)
        assert response.status_code == 200 and response.mimetype == "text/html", path
        assert "Access-Control-Allow-Origin" not in response.headers, path
