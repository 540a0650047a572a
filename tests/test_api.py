"""The JSON API: pagination, items, and strict parameters."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp.db.seed import generate_episode


def test_first_page_newest_first_with_links(client):
    data = client.get("/api/episodes?per_page=10").get_json()
    assert [e["number"] for e in data["episodes"]] == list(range(30, 20, -1))
    assert (data["page"], data["per_page"], data["pages"], data["total"]) == (1, 10, 3, 30)
    assert data["links"] == {"next": "/api/episodes?page=2&per_page=10", "prev": None}


def test_pages_cover_every_episode_once(client):
    numbers = []
    url = "/api/episodes?per_page=7"
    while url:
        data = client.get(url).get_json()
        numbers += [e["number"] for e in data["episodes"]]
        url = data["links"]["next"]
    assert numbers == list(range(30, 0, -1))


def test_episode_item_fields(client):
    expected = generate_episode(3)
    data = client.get("/api/episodes/3").get_json()
    assert data["number"] == 3 and data["title"] == expected["title"]
    assert data["url"] == f"https://podcast.test/episodes/3/{expected['slug']}"
    assert data["audio"] == {
        "url": expected["audio_url"],
        "bytes": expected["audio_bytes"],
        "type": "audio/mpeg",
    }
    assert data["show_notes_html"] == expected["show_notes"]
    assert data["published_at"] == expected["published_at"].isoformat()
    assert [g["slug"] for g in data["guests"]] == expected["guests"]


def test_empty_catalogue_has_one_empty_page(empty_app):
    data = empty_app.test_client().get("/api/episodes").get_json()
    assert data["episodes"] == [] and data["total"] == 0 and data["pages"] == 1


@pytest.mark.parametrize(
    "query, reason",
    [
        ("page=0", "'page' must be from 1"),
        ("page=-1", "'page' must be a whole number"),
        ("page=abc", "'page' must be a whole number"),
        ("page=1.5", "'page' must be a whole number"),
        ("page=99999999999999999999", "'page' must be a whole number"),
        ("page=4", "'page' must be from 1 to 3 at per_page=10"),
        ("per_page=0", "'per_page' must be from 1 to 100"),
        ("per_page=101", "'per_page' must be from 1 to 100"),
        ("page=1&page=2", "'page' was given 2 times"),
        ("page=%ff", "not valid UTF-8"),
    ],
)
def test_malformed_parameters_are_400_with_a_reason(client, query, reason):
    if "per_page" not in query:
        query += "&per_page=10"
    response = client.get(f"/api/episodes?{query}")
    assert response.status_code == 400
    assert response.content_type == "application/json"
    assert reason in response.get_json()["message"]


@pytest.mark.parametrize(
    "path", ["/api/episodes/31", "/api/episodes/0", "/api/nothing", "/api/episodes/x"]
)
def test_unknown_api_urls_are_json_404s(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["status"] == 404


def test_wrong_method_is_json_405_with_allow(client):
    response = client.post("/api/episodes")
    assert response.status_code == 405
    assert response.get_json()["status"] == 405
    assert "GET" in response.headers["Allow"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page=st.one_of(st.integers(-(10**12), 10**12).map(str), st.text(max_size=30)),
    per_page=st.one_of(st.integers(-(10**6), 10**6).map(str), st.text(max_size=30)),
)
def test_any_parameters_get_a_page_or_a_400_never_a_500(client, page, per_page):
    response = client.get("/api/episodes", query_string={"page": page, "per_page": per_page})
    assert response.status_code in {200, 400}
    data = response.get_json()
    if response.status_code == 200:
        assert 1 <= len(data["episodes"]) <= int(per_page)
        assert data["page"] == int(page)
    else:
        assert data["message"]
