"""Any text in any field a profile keeps is shown as that text, and never as markup or script.

Hypothesis puts generated strings (escape characters, closing tags, comment
openers, quotes, line separators, anything Unicode) in the path, query,
method, a header, the endpoint, a SQL statement and an error message at once.
Every viewer page must then have the same elements and attributes as with a
plain ``x`` in their place, show the text itself, and pyinstrument's page must
carry it as inert JSON that reads back to the same string.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from request_profiler.redact import Redactor

from tests.profiler.helpers import run

from .conftest import Served, profile_request

#: Pieces that end or change an HTML, script, attribute or JSON context.
FRAGMENTS = st.sampled_from(
    [
        "</script>",
        "<script>",
        "<!--",
        "-->",
        "</",
        "<",
        ">",
        "&",
        "&amp;",
        '"',
        "'",
        "`",
        "\\",
        "\u2028",
        "\u2029",
        "\x00",
        "<img src=x onerror=alert(1)>",
        "javascript:",
        "]]>",
        "{{",
        "%3C",
        "\n",
    ]
)
HOSTILE = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), min_size=1, max_size=8).map("".join)


class Skeleton(HTMLParser):
    """A page's start tags with their attribute names, and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, tuple[str, ...]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, tuple(sorted(name for name, _ in attrs))))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def request_with(served: Served, text: str) -> str:
    """Profile a request with ``text`` in every field, as a server passes it; its id.

    The path and the query are UTF-8 bytes as latin-1 text (PEP 3333); the
    rest is what an application or a server that decodes may hand over.
    """
    for path in served.store_dir.glob("*.profile"):  # one profile in the lists at a time
        path.unlink()
    as_wsgi = text.encode("utf-8").decode("latin-1")
    meta = profile_request(
        served,
        environ_overrides={
            "PATH_INFO": "/" + as_wsgi,
            "QUERY_STRING": "q=" + as_wsgi,
            "REQUEST_METHOD": "GET" + text,
            "HTTP_X_ANYTHING": text,
            "HTTP_X_ENDPOINT": text,
            "HTTP_X_SQL": text,
            "HTTP_X_ERROR": text,
        },
    )
    return meta["id"]


def viewer_pages(served: Served, profile_id: str) -> dict[str, str]:
    """The pages that show the profile, by name."""
    paths = {
        "list": "/_profiler/",
        "endpoints": "/_profiler/endpoints",
        "detail": f"/_profiler/{profile_id}",
        "profile": f"/_profiler/{profile_id}/profile.html",
    }
    headers = {"X-Profile-Token": served.token}
    return {
        name: run(served.middleware, path, headers=headers).body.decode()
        for name, path in paths.items()
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=HOSTILE)
def test_hostile_text_in_every_field_is_shown_as_text(served: Served, text: str) -> None:
    plain = viewer_pages(served, request_with(served, "x"))
    hostile = viewer_pages(served, request_with(served, text))
    shown = Redactor().text(text)  # stored as such: any "_profile=" value redacted

    for name in ("list", "endpoints", "detail"):
        assert Skeleton(hostile[name]).tags == Skeleton(plain[name]).tags, name
    detail_text = "".join(Skeleton(hostile["detail"]).text)
    for field in (
        f"GET{shown}",  # the method
        f"/{shown}?q=",  # the path
        f"SELECT * FROM episodes WHERE title = '{shown}'",
        f"LookupError: {shown}",
    ):
        assert field in detail_text

    # pyinstrument's page: the description is inert JSON that reads back exactly.
    data = re.search(
        r'<script type="application/json" id="pyinstrument-session">(.*?)</script>',
        hostile["profile"],
        re.S,
    )[1]
    assert not set("<>&\u2028\u2029") & set(data)
    assert json.loads(data)["session"]["target_description"] == f"GET{shown} /{shown}"
    assert hostile["profile"].count("<script") == 3  # the data block and pyinstrument's two
