"""webapp/cors.py on an app of its own: which paths other origins may read is the app's to say.

A site copied from this template keeps cors.py and has other routes (README, "Make it
yours"): nothing of the podcast's paths may be built into the module.
"""

from __future__ import annotations

from flask import Flask

from webapp import cors

PREFLIGHT = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}


def app_reading(readable_anywhere: str) -> Flask:
    app = Flask(__name__)
    for path in ("/articles/feed.xml", "/articles/7", "/episodes/rss", "/api/episodes"):
        app.add_url_rule(path, path, lambda: "text")
    cors.init_app(app, readable_anywhere)
    return app


def test_other_origins_read_the_paths_the_app_names_and_no_others() -> None:
    client = app_reading(r"/articles/feed\.xml$").test_client()

    assert client.get("/articles/feed.xml").headers["Access-Control-Allow-Origin"] == "*"
    assert client.get("/no/such/page").headers.get("Access-Control-Allow-Origin") is None
    for path in ("/articles/7", "/episodes/rss", "/api/episodes"):
        assert "Access-Control-Allow-Origin" not in client.get(path).headers, path


def test_a_preflight_is_answered_only_on_those_paths() -> None:
    client = app_reading(r"/articles/feed\.xml$").test_client()

    answered = client.options("/articles/feed.xml", headers=PREFLIGHT)
    assert answered.status_code == 204
    assert answered.headers["Access-Control-Allow-Origin"] == "*"
    refused = client.options("/episodes/rss", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_two_apps_in_one_process_keep_their_own_paths() -> None:
    feed, api = app_reading(r"/articles/feed\.xml$"), app_reading(r"/api/")

    assert "Access-Control-Allow-Origin" in api.test_client().get("/api/episodes").headers
    assert "Access-Control-Allow-Origin" not in feed.test_client().get("/api/episodes").headers


def test_options_says_the_methods_the_route_takes() -> None:
    """Allow names what the route itself takes, whatever other origins may do with it (a
    site's own form posting to a readable path); the CORS answer stays read-only."""
    app = app_reading(r"/articles/")
    app.add_url_rule("/articles/comments", "comments", lambda: "ok", methods=["GET", "POST"])
    client = app.test_client()

    answer = client.options("/articles/comments", headers=PREFLIGHT)
    assert answer.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert answer.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    assert client.options("/articles/7").headers["Allow"] == "GET, HEAD, OPTIONS"
