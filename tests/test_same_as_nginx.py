"""webapp/same_as_nginx.py in the app: what it answers where nginx is not in front."""

from __future__ import annotations

import pytest


def get_path(client, path: str):
    """The app's answer to a request line for ``path`` (the test client reads "//" as a host)."""
    return client.get(
        "/", environ_overrides={"PATH_INFO": path}, headers={"Origin": "https://a.example"}
    )


@pytest.mark.parametrize(
    "path, location",
    [
        ("/api//episodes", "/api/episodes"),
        ("//api/episodes/3", "/api/episodes/3"),
        ("/episodes//rss", "/episodes/rss"),
        ("/episodes/3//chapters.json", "/episodes/3/chapters.json"),
    ],
)
def test_the_redirect_of_a_path_other_origins_read_is_readable_too(
    client, path: str, location: str
) -> None:
    """A script on another origin follows a redirect only if the redirect allows it (CORS), as
    nginx's own 308 does for these paths, and the app's did when Werkzeug made it."""
    response = get_path(client, path)
    assert (response.status_code, response.headers["Location"]) == (308, location)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Expose-Headers"] == "ETag, Link, Retry-After"


@pytest.mark.parametrize("path", ["//", "/episodes//", "//search", "/episodes//rss/x"])
def test_the_redirect_of_a_page_allows_no_other_origin(client, path: str) -> None:
    response = get_path(client, path)
    assert response.status_code == 308
    assert "Access-Control-Allow-Origin" not in response.headers
