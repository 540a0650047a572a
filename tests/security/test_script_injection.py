"""Request text never runs as script in the profiler's pages, in a real browser (headless Chromium).

Each payload, once it runs, sets ``data-xss`` on the top document's ``<html>``
to the name of the field it came in by; the DOM Chromium dumps after the page
(and its frame) loaded shows whether any did. The positive controls load the
same payloads where they do run, so a browser that ran nothing (scripts off, a
page that failed to load) cannot pass these tests.
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote

import pytest
from pyinstrument.renderers import HTMLRenderer
from pyinstrument.session import Session

from .conftest import Served, profile_request, serving

pytestmark = pytest.mark.slow

#: Where request text lands in what the profiler stores and shows.
FIELDS = ("path", "query", "method", "user-agent", "referer", "header", "endpoint", "sql", "error")


def mark(field: str) -> str:
    """JavaScript that leaves ``data-xss=field`` on the top page, from the page or its frame."""
    return f"top.document.documentElement.setAttribute('data-xss','{field}')"


#: Ways out of each context the pages put text in: a script, an element, an attribute value,
#: HTML comments inside a script, and a JSON string.
PAYLOADS = {
    "end-script": "</script><script>{js}</script>",
    "element": "<img src=x onerror={js}>",
    "attribute": "\"'><svg onload={js}>",
    "comment-in-script": "<!--<script></script><script>{js}</script>-->",
    "json-string": '";{js};"',
}


def hostile_request(served: Served, template: str) -> dict:
    """One profiled request carrying ``template`` in every field; its stored metadata."""

    def text(field: str) -> str:
        # No spaces: they would end an attribute payload before its handler.
        return template.format(js=mark(field)).replace(" ", "/")

    return profile_request(
        served,
        headers={
            "User-Agent": text("user-agent"),
            "Referer": text("referer"),
            "X-Anything": text("header"),
            "X-Endpoint": text("endpoint"),
            "X-Sql": text("sql"),
            "X-Error": text("error"),
        },
        environ_overrides={
            "PATH_INFO": "/" + text("path"),
            "QUERY_STRING": "q=" + text("query"),
            "REQUEST_METHOD": "GET" + text("method"),
        },
    )


def ran(dom: str) -> str | None:
    """The field whose payload ran, if any."""
    found = re.search(r"<html[^>]*\sdata-xss=\"([^\"]*)\"", dom)
    return found and found[1]


@pytest.fixture
def hostile(served: Served) -> dict[str, dict]:
    """A stored profile per payload, each with the payload in every field."""
    return {name: hostile_request(served, template) for name, template in PAYLOADS.items()}


def test_the_lists_show_every_field_as_text(chromium, live: Served, hostile) -> None:
    for page in ("/_profiler/", "/_profiler/?sort=duration", "/_profiler/endpoints"):
        dom = chromium.dump_dom(live.viewer_url + page)

        assert ran(dom) is None, page
        assert "<table>" in dom and "<h1>" in dom  # the viewer's page, not an error
    # The text is all there, as text: every field's payload shows in the list.
    dom = chromium.dump_dom(live.viewer_url + "/_profiler/")
    assert dom.count("top.document.documentElement.setAttribute") >= len(PAYLOADS)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_profile_page_and_its_frame_run_no_request_text(
    chromium, live: Served, hostile, payload: str
) -> None:
    # The frame is pyinstrument's page (profile.html): a payload run there marks this page too.
    dom = chromium.dump_dom(f"{live.viewer_url}/_profiler/{hostile[payload]['id']}")

    assert ran(dom) is None
    assert '<iframe src="/_profiler/' in dom and "Request headers" in dom


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_link_to_the_inline_view_runs_no_request_text(
    chromium, live: Served, payload: str
) -> None:
    # A link someone could be sent: the attacker's path, the attacker's token.
    path = "/" + quote(PAYLOADS[payload].format(js=mark("path")), safe="")
    url = f"{live.site_url}{path}?_profile={live.token}&_profile_view=inline"

    dom = chromium.dump_dom(url)

    assert ran(dom) is None
    # pyinstrument's app did run (its scripts are allowed by hash) and shows the path as text.
    shown = re.search(r'<div class="target-description[^"]*"[^>]*>([^<]*)<', dom)[1]
    assert html.unescape(shown) == "GET /" + PAYLOADS[payload].format(js=mark("path"))


# --- Positive controls: where the same payloads do run -----------------------------


def unsafe_app(pages: dict[str, tuple[bytes, str]]):
    def app(environ, start_response):
        body, policy = pages[environ["PATH_INFO"]]
        headers = [("Content-Type", "text/html; charset=utf-8")]
        if policy:
            headers.append(("Content-Security-Policy", policy))
        start_response("200 OK", headers)
        return [body]

    return app


def test_control_the_browser_runs_these_payloads_where_they_are_not_escaped(
    chromium, live: Served, hostile
) -> None:
    # pyinstrument's own renderer, as the profiler served it before, under its old policy.
    session = Session.from_json(
        json.loads(live.middleware.store.load(hostile["end-script"]["id"])[1])
    )
    old_policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
    pages = {
        "/pyinstrument": (HTMLRenderer().render(session).encode(), old_policy),
        "/element": (
            f"<!DOCTYPE html><p>{PAYLOADS['element'].format(js=mark('path'))}</p>".encode(),
            "",
        ),
    }
    with serving(unsafe_app(pages)) as url:
        assert ran(chromium.dump_dom(url + "/pyinstrument")) == "path"
        assert ran(chromium.dump_dom(url + "/element")) == "path"
