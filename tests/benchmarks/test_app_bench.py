"""The dynamic routes in-process: an episode page and the API list, on 600 episodes.

    pytest tests/benchmarks/test_app_bench.py --benchmark-only

``episode-page``: a whole GET of an episode page through Flask's test client,
and the template render alone for the same episode (the difference is the
query and the request machinery). ``api``: the default API page (20 episodes
with guests), the largest one (100), and one episode. After the first request
both list pages are answered from what the process keeps until the data
changes (webapp/data_cache.py), as a serving worker answers them, so the two
cost about the same: these time the kept answer, not making the page
(test_routes_bench's ``test_first_answer_after_a_data_change`` times that).
``routes``: ``/health``, the cheapest route that still reads the database (the
tuning lab compares the feed's 304 path against it under load), and the home
page.
"""

from __future__ import annotations

import pytest
from flask import render_template

from webapp.db import get_database, queries

EPISODE = 300


@pytest.fixture(scope="module")
def client(seeded_sqlite_app):
    return seeded_sqlite_app.test_client()


@pytest.fixture(scope="module")
def episode(seeded_sqlite_app):
    with get_database(seeded_sqlite_app).session() as session:
        return queries.episode_by_number(session, EPISODE)


@pytest.mark.benchmark(group="episode-page")
def test_episode_page_get(benchmark, client, episode):
    response = benchmark(client.get, episode.path)
    assert response.status_code == 200 and episode.title.encode() in response.data


@pytest.mark.benchmark(group="episode-page")
def test_episode_page_render_only(benchmark, seeded_sqlite_app, episode):
    with seeded_sqlite_app.test_request_context(episode.path):
        html = benchmark(render_template, "episode.html", episode=episode)
    assert episode.title in html


@pytest.mark.benchmark(group="api")
@pytest.mark.parametrize("per_page", [20, 100])
def test_api_list(benchmark, client, per_page):
    response = benchmark(client.get, f"/api/episodes?per_page={per_page}")
    assert response.status_code == 200 and len(response.json["episodes"]) == per_page


@pytest.mark.benchmark(group="api")
def test_api_detail(benchmark, client):
    response = benchmark(client.get, f"/api/episodes/{EPISODE}")
    assert response.status_code == 200 and response.json["number"] == EPISODE


@pytest.mark.benchmark(group="routes")
@pytest.mark.parametrize("path", ["/health", "/"])
def test_route_get(benchmark, client, path):
    assert benchmark(client.get, path).status_code == 200
