"""Only the viewer's own page sets the profiling cookie: another site's form cannot plant a token.

The browser tests post the viewer's form from a page that submits it by itself
as soon as it loads: once from another site (``localhost`` against the
viewer's ``127.0.0.1``: another site to the browser), once from the viewer's
own origin. What the browser sends (``Sec-Fetch-Site``, ``Origin``) is its own.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from tests.profiler.helpers import run

from .conftest import Served, auto_post_app, serving


def cookie_form_url(page_base: str, served: Served, action: str = "set") -> str:
    """A page at ``page_base`` that posts ``cookie=<action>`` with the token in the query."""
    target = f"{served.site_url}/_profiler/?_profile={served.token}"
    return f"{page_base}?{urlencode({'action': target, 'cookie': action})}"


def posts(served: Served) -> list[tuple[str, str | None]]:
    """(status, Set-Cookie) of each POST the viewer answered."""
    return [(status, cookie) for method, _, status, cookie in served.answered if method == "POST"]


@pytest.mark.slow
def test_a_form_on_another_site_cannot_set_the_cookie(chromium, live: Served) -> None:
    with serving(auto_post_app, host="localhost") as attacker:
        dom = chromium.dump_dom(cookie_form_url(attacker + "/post", live))

    assert posts(live) == [("403 Forbidden", None)]
    assert "same-origin POST" in dom


@pytest.mark.slow
def test_the_viewers_own_page_sets_it_and_the_cookie_then_opens_the_viewer(
    chromium, live: Served
) -> None:
    dom = chromium.dump_dom(cookie_form_url(live.site_url + "/_test/post", live))

    [(status, cookie)] = posts(live)
    assert status == "303 See Other" and cookie.startswith(f"_profile={live.token};")
    # Redirected to the list, which the browser opened with nothing but the new cookie.
    assert ("GET", "/_profiler/", "200 OK", None) in live.answered
    assert "<h1>Recent profiles</h1>" in dom


SAME_ORIGIN_HEADERS = [
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://elsewhere.test"},  # the browser decides
    {"Origin": "http://localhost"},  # a browser without Fetch Metadata
]
OTHER_ORIGIN_HEADERS = [
    {},  # no browser page vouched for it
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another party
    {"Sec-Fetch-Site": "none"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
    {"Origin": "http://evil.test"},
    {"Origin": "null"},  # a sandboxed frame or a data: page
    {"Origin": "https://localhost"},  # another scheme
    {"Origin": "http://localhost:8080"},  # another port
]


@pytest.mark.parametrize("headers", SAME_ORIGIN_HEADERS)
def test_a_same_origin_post_sets_the_cookie(served: Served, headers: dict) -> None:
    result = post_cookie(served, headers)

    assert result.status == "303 See Other" and result.header("Set-Cookie")


@pytest.mark.parametrize("headers", OTHER_ORIGIN_HEADERS)
@pytest.mark.parametrize("action", ["set", "clear"])
def test_any_other_post_changes_nothing(served: Served, headers: dict, action: str) -> None:
    result = post_cookie(served, headers, action)

    assert result.status == "403 Forbidden" and result.header("Set-Cookie") is None


@pytest.mark.parametrize(
    "environ, origin",
    [
        # Behind nginx: Host is $host (no port), the port is SERVER_PORT.
        ({"HTTP_HOST": "127.0.0.1", "SERVER_PORT": "8000"}, "http://127.0.0.1:8000"),
        ({"HTTP_HOST": "podcast.test", "SERVER_PORT": "443"}, "https://podcast.test"),
        ({"HTTP_HOST": "podcast.test:443", "SERVER_PORT": "443"}, "https://podcast.test"),
        ({"HTTP_HOST": "[::1]:8443", "SERVER_PORT": "8443"}, "https://[::1]:8443"),
    ],
)
def test_the_origin_is_compared_with_the_address_the_browser_used(
    served: Served, environ: dict, origin: str
) -> None:
    scheme = origin.partition(":")[0]
    environ = {"wsgi.url_scheme": scheme, **environ}

    assert post_cookie(served, {"Origin": origin}, environ=environ).status == "303 See Other"
    assert post_cookie(served, {"Origin": origin + "1"}, environ=environ).status.startswith("403")


def test_a_get_never_sets_the_cookie(served: Served) -> None:
    result = run(
        served.middleware,
        "/_profiler/",
        query_string={"_profile": served.token, "cookie": "set"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )

    assert result.status == "200 OK" and result.header("Set-Cookie") is None


def post_cookie(served: Served, headers: dict, action: str = "set", environ: dict | None = None):
    return run(
        served.middleware,
        "/_profiler/",
        method="POST",
        query_string={"_profile": served.token},
        data={"cookie": action},
        headers=headers,
        environ_overrides=environ or {},
    )
