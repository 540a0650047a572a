"""The viewer: invisible without a token, its pages, downloads, cookie buttons and redaction."""

from __future__ import annotations

import io
import json
import pstats
import re
import threading
import time
from pathlib import Path

import pytest
from pyinstrument.session import Session
from request_profiler import ENDPOINT_KEY, DirectoryStore, make_token
from request_profiler.viewer import aggregate
from werkzeug.test import Client

from .helpers import (
    OTHER_SECRET,
    SECRET,
    assert_html5_document,
    assert_runs_only_its_own_scripts,
    environ_for,
    inline_scripts,
    run,
    script_sources,
    stored,
)


def site_app(environ, start_response):
    """A site with three pages and its own 404 page."""
    path = environ["PATH_INFO"]
    if path not in ("/", "/slow", "/episodes"):
        start_response("404 NOT FOUND", [("Content-Type", "text/html"), ("X-Site", "yes")])
        return [b"<h1>The site's own 404</h1>"]
    if path == "/slow":
        time.sleep(0.1)  # well above any quick request, even on a loaded machine
    environ[ENDPOINT_KEY] = {
        "/": "pages.index",
        "/slow": "pages.slow",
        "/episodes": "pages.episodes",
    }[path]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page " + path.encode()]


@pytest.fixture
def middleware(make_middleware):
    return make_middleware(site_app)


#: What a browser sends with a form posted by a page of the same origin.
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


class TokenBrowser:
    """A browser that sends the token in a header with every request, posting from the viewer."""

    def __init__(self, app, token: str) -> None:
        self._client = Client(app)
        self._headers = {"X-Profile-Token": token}

    def get(self, path: str, **options):
        return self._client.get(path, headers=self._headers, **options)

    def post(self, path: str, **options):
        return self._client.post(path, headers=self._headers | SAME_ORIGIN, **options)


@pytest.fixture
def viewer(middleware, token) -> TokenBrowser:
    return TokenBrowser(middleware, token)


def profile(middleware, token: str, path: str = "/", **options) -> str:
    return run(middleware, path, headers={"X-Profile-Token": token}, **options).header(
        "X-Profile-Id"
    )


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/_profiler/"),
        ("GET", "/_profiler"),
        ("GET", "/_profiler/endpoints"),
        ("POST", "/_profiler/"),
        ("GET", "/_profiler/20240101T000000000000-abcdefabcdef"),
    ],
)
@pytest.mark.parametrize(
    "credential",
    [None, "garbage", make_token(OTHER_SECRET, 60), make_token(SECRET, 60, now=0)],
    ids=["none", "garbage", "forged", "expired"],
)
def test_without_a_valid_token_the_site_answers_its_own_404(
    middleware, method, path, credential
) -> None:
    headers = {"X-Profile-Token": credential} if credential else {}

    assert run(middleware, path, method=method, headers=headers) == run(
        site_app, path, method=method, headers=headers
    )


def test_only_a_token_holder_waits_for_the_profile_writer(
    make_middleware, store_dir, token
) -> None:
    """The viewer waits for this process's writer, so that a profile just taken is listed. It
    waited before the token was checked: anyone could hold a worker for a second per request
    under the viewer's path, while the store was slow."""
    gate = threading.Event()

    class SlowStore(DirectoryStore):
        def save_many(self, profiles) -> None:
            assert gate.wait(10), "the test never opened the gate"
            super().save_many(profiles)

    middleware = make_middleware(site_app, store=SlowStore(store_dir), sample_rate=1.0)

    def serve(path: str) -> bytes:
        """As a server serves it; helpers.run would wait for the writer."""
        body = middleware(environ_for(path), lambda status, headers, exc_info=None: None)
        try:
            return b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()

    serve("/")  # sampled: its profile waits at the gate
    started = time.perf_counter()
    answer = serve("/_profiler/")
    waited = time.perf_counter() - started
    gate.set()

    assert answer == b"<h1>The site's own 404</h1>"
    assert waited < 0.5
    serve("/episodes")  # sampled: queued for a batch the writer stores in half a second
    listing = run(middleware, "/_profiler/", headers={"X-Profile-Token": token})
    assert b"/episodes" in listing.body


def test_the_list_shows_recent_profiles_newest_first_and_sorts_by_duration(
    middleware, viewer, token
) -> None:
    profile(middleware, token, "/slow")
    profile(middleware, token, "/episodes", query_string={"page": "2"})

    recent = viewer.get("/_profiler/")
    slowest = viewer.get("/_profiler/", query_string={"sort": "duration"})

    assert recent.status_code == 200
    assert_html5_document(recent.text)
    assert recent.text.index("/episodes?page=2") < recent.text.index("/slow")
    assert slowest.text.index("/slow") < slowest.text.index("/episodes?page=2")
    for column in ("Time (UTC)", "Method", "Path", "Status", "ms", "SQL queries / ms"):
        assert f">{column}</th>" in recent.text
    assert "script" not in recent.headers["Content-Security-Policy"]


def test_viewer_requests_are_not_profiled(middleware, viewer, store_dir) -> None:
    viewer.get("/_profiler/")

    assert stored(store_dir) == []


def test_a_profile_page_embeds_the_interactive_profile_and_links_downloads(
    middleware, viewer, token
) -> None:
    profile_id = profile(middleware, token, "/episodes")

    page = viewer.get(f"/_profiler/{profile_id}")
    interactive = viewer.get(f"/_profiler/{profile_id}/profile.html")

    assert_html5_document(page.text)
    assert "<h1>GET /episodes</h1>" in page.text
    assert f'<iframe src="/_profiler/{profile_id}/profile.html"' in page.text
    assert f'href="/_profiler/{profile_id}/download/speedscope"' in page.text
    assert "pages.episodes" in page.text
    assert interactive.status_code == 200
    assert "pyinstrumentHTMLRenderer.render" in interactive.text
    assert_runs_only_its_own_scripts(
        interactive.text, interactive.headers["Content-Security-Policy"]
    )


HOSTILE_PATH = "/</script><script>alert(1)</script><!--<script>\u2028&amp;"


def test_request_text_reaches_pyinstrument_as_data_never_as_markup(
    middleware, viewer, token
) -> None:
    profile_id = profile(middleware, token, HOSTILE_PATH)

    page = viewer.get(f"/_profiler/{profile_id}/profile.html").text

    data = re.search(
        r'<script type="application/json" id="pyinstrument-session">(.*?)</script>', page, re.S
    )[1]
    assert not set("<>&\u2028\u2029") & set(data)
    assert json.loads(data)["session"]["target_description"] == f"GET {HOSTILE_PATH}"
    assert len(inline_scripts(page)) == 2  # pyinstrument's app and the line that starts it


def test_a_page_without_scripts_is_allowed_none(make_middleware, token) -> None:
    middleware = make_middleware(site_app, profiler="cprofile")
    profile_id = profile(middleware, token, HOSTILE_PATH)

    page = Client(middleware).get(
        f"/_profiler/{profile_id}/profile.html", headers={"X-Profile-Token": token}
    )

    assert script_sources(page.headers["Content-Security-Policy"]) == ["'none'"]


def test_links_include_the_script_name_of_a_mounted_site(middleware, token) -> None:
    profile_id = profile(middleware, token)
    page = run(
        middleware,
        f"/_profiler/{profile_id}",
        headers={"X-Profile-Token": token},
        environ_overrides={"SCRIPT_NAME": "/site"},
    )

    assert f'src="/site/_profiler/{profile_id}/profile.html"' in page.body.decode()


def test_pyinstrument_profiles_download_as_speedscope_and_session(
    middleware, viewer, token
) -> None:
    profile_id = profile(middleware, token)

    speedscope = viewer.get(f"/_profiler/{profile_id}/download/speedscope")
    session = viewer.get(f"/_profiler/{profile_id}/download/session")

    assert (
        speedscope.headers["Content-Disposition"]
        == f'attachment; filename="{profile_id}.speedscope.json"'
    )
    assert "speedscope" in json.loads(speedscope.data)["$schema"]
    assert Session.from_json(json.loads(session.data)).target_description == "GET /"


def test_cprofile_profiles_download_as_pstats(make_middleware, token, tmp_path: Path) -> None:
    middleware = make_middleware(site_app, profiler="cprofile")
    profile_id = profile(middleware, token)
    client = Client(middleware)

    download = client.get(
        f"/_profiler/{profile_id}/download/pstats", headers={"X-Profile-Token": token}
    )
    page = client.get(f"/_profiler/{profile_id}/profile.html", headers={"X-Profile-Token": token})

    (tmp_path / "p.pstats").write_bytes(download.data)
    assert any(name == "site_app" for _, _, name in pstats.Stats(str(tmp_path / "p.pstats")).stats)
    assert "site_app" in page.text and "cumulative" in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/_profiler/..",
        "/_profiler/../outside",
        "/_profiler/%2e%2e/outside",
        "/_profiler/..%2Foutside",
        "/_profiler/20240101T000000000000-abcdefabcdef",
        "/_profiler/20240101T000000000000-abcdefabcdef/profile.html",
        "/_profiler/{id}/download/../../outside",
        "/_profiler/{id}/download/csv",
        "/_profiler/{id}/nothing",
    ],
)
def test_unknown_and_traversing_ids_are_404(middleware, viewer, token, store_dir, path) -> None:
    profile_id = profile(middleware, token)
    (store_dir.parent / "outside.profile").write_text(
        '{"id": "outside", "profiler": "pyinstrument"}\n{}'
    )

    response = viewer.get(path.format(id=profile_id))

    assert response.status_code == 404
    assert "X-Site" not in response.headers  # the viewer's own 404: the token was valid


def test_a_damaged_profile_file_leaves_the_other_pages_working(
    middleware, viewer, token, store_dir
) -> None:
    kept = profile(middleware, token, "/episodes")
    damaged = profile(middleware, token, "/slow")
    [path] = store_dir.glob(f"{damaged}.*")

    path.write_bytes(path.read_bytes()[:20])  # cut in its metadata

    listing = viewer.get("/_profiler/")
    assert listing.status_code == 200
    assert kept in listing.text and damaged not in listing.text
    assert viewer.get("/_profiler/endpoints").status_code == 200
    assert viewer.get(f"/_profiler/{damaged}").status_code == 404


def test_a_profile_whose_data_is_damaged_is_said_so(middleware, viewer, token, store_dir) -> None:
    damaged = profile(middleware, token)
    [path] = store_dir.glob(f"{damaged}.*")
    metadata, _, data = path.read_bytes().partition(b"\n")

    path.write_bytes(metadata + b"\n" + data[:10])

    assert viewer.get(f"/_profiler/{damaged}").status_code == 200  # its metadata is whole
    for page in ("profile.html", "download/speedscope", "download/session"):
        response = viewer.get(f"/_profiler/{damaged}/{page}")
        assert response.status_code == 404, page
        assert "cannot be read" in response.text


def test_a_cprofile_profile_whose_data_is_damaged_is_said_so(
    make_middleware, token, store_dir
) -> None:
    middleware = make_middleware(site_app, profiler="cprofile")
    damaged = profile(middleware, token)
    [path] = store_dir.glob(f"{damaged}.*")
    metadata, _, data = path.read_bytes().partition(b"\n")

    path.write_bytes(metadata + b"\n" + data[: len(data) // 2])

    for page in ("profile.html", "download/pstats"):
        response = TokenBrowser(middleware, token).get(f"/_profiler/{damaged}/{page}")
        assert response.status_code == 404, page
        assert "cannot be read" in response.text


_MISSING = object()

#: First lines a profile file may hold that the middleware never wrote: another program's JSON,
#: or its own metadata edited by hand.
FOREIGN_METADATA = {
    "an empty object": {},
    "a list": [],
    "a number": 1,
    "a string": "x",
    "null": None,
    "a duration that is text": {"duration_ms": "x"},
    "a duration that is NaN": {"duration_ms": float("nan")},
    "a duration too large for a float": {"duration_ms": 10**400},
    "no path": {"path": _MISSING},
    "no time": {"time": _MISSING},
    "a time past year 9999": {"time": 1e300},
    "a time that is text": {"time": "2024-01-01"},
    "a status that is text": {"status": "200 OK"},
    "a list for an endpoint": {"endpoint": ["pages.index"]},
    "an object for an engine": {"profiler": {"name": "pyinstrument"}},
    "SQL that is text": {"sql": "SELECT 1"},
    "an SQL count that is text": {"sql_count": "1"},
    "headers that are a list": {"headers": [["Host", "x"]]},
    "an id that is a path": {"id": "../../etc/passwd"},
    "a query that is null": {"query": None},
    "a host that is a list": {"host": ["app-1"]},
    "a flag that is a number": {"body_complete": 1},
}
#: Damage inside the SQL list or the headers: the lists do not check every item (it would cost
#: them as much as drawing them), the profile's own page does.
DAMAGED_ITEMS = {
    "SQL rows that are not pairs": {"sql": [["SELECT 1"]]},
    "an SQL time that is text": {"sql": [["SELECT 1", "1 ms"]]},
    "a header that is a number": {"headers": {"X-Number": 1}},
}


def _write_first_line(path: Path, changes: object) -> None:
    metadata, _, data = path.read_bytes().partition(b"\n")
    path.write_bytes(json.dumps(_edited(json.loads(metadata), changes)).encode() + b"\n" + data)


def _edited(meta: dict, changes: object) -> object:
    if not isinstance(changes, dict) or not changes:
        return changes  # a whole first line of its own
    edited = dict(meta)
    for key, value in changes.items():
        if value is _MISSING:
            del edited[key]
        else:
            edited[key] = value
    return edited


@pytest.mark.parametrize("changes", FOREIGN_METADATA.values(), ids=FOREIGN_METADATA)
def test_metadata_the_middleware_never_writes_is_a_damaged_profile(
    middleware, viewer, token, store_dir, changes
) -> None:
    """An object with none of the middleware's keys (``{}``) made every page raise KeyError:
    a 500 for the list, the endpoint page, and the profile's own pages."""
    kept = profile(middleware, token, "/episodes")
    foreign = profile(middleware, token, "/slow")
    [path] = store_dir.glob(f"{foreign}.*")

    _write_first_line(path, changes)

    for listing in ("/_profiler/", "/_profiler/?sort=duration", "/_profiler/endpoints"):
        response = viewer.get(listing)
        assert response.status_code == 200, listing
        assert "/slow" not in response.text and "pages.slow" not in response.text
    assert kept in viewer.get("/_profiler/").text
    for page in ("", "/profile.html", "/download/speedscope", "/download/session"):
        response = viewer.get(f"/_profiler/{foreign}{page}")
        assert response.status_code == 404, page
        if isinstance(changes, dict) and changes:
            assert "damaged" in response.text, page


@pytest.mark.parametrize("changes", DAMAGED_ITEMS.values(), ids=DAMAGED_ITEMS)
def test_a_damaged_sql_row_or_header_makes_the_profiles_own_pages_404(
    middleware, viewer, token, store_dir, changes
) -> None:
    damaged = profile(middleware, token, "/slow")
    [path] = store_dir.glob(f"{damaged}.*")

    _write_first_line(path, changes)

    for listing in ("/_profiler/", "/_profiler/?sort=duration", "/_profiler/endpoints"):
        assert viewer.get(listing).status_code == 200, listing
    for page in ("", "/profile.html", "/download/speedscope", "/download/session"):
        response = viewer.get(f"/_profiler/{damaged}{page}")
        assert response.status_code == 404, page
        assert "damaged" in response.text, page


def test_text_that_is_no_unicode_character_is_shown_replaced(
    middleware, viewer, token, store_dir
) -> None:
    """JSON may escape half a surrogate pair, which no UTF-8 page can hold: encoding the page
    raised UnicodeEncodeError."""
    odd = profile(middleware, token, "/episodes")
    [path] = store_dir.glob(f"{odd}.*")
    metadata, _, data = path.read_bytes().partition(b"\n")
    meta = json.loads(metadata)
    meta["path"] = "/lone-\ud800"
    meta["headers"]["X-Odd"] = "\udfff"

    path.write_bytes(json.dumps(meta).encode() + b"\n" + data)

    assert "/lone-?" in viewer.get("/_profiler/").text
    assert viewer.get("/_profiler/endpoints").status_code == 200
    assert "/lone-?" in viewer.get(f"/_profiler/{odd}").text


@pytest.mark.parametrize("target", ["profile", "/etc/passwd"])
def test_a_symbolic_link_in_the_store_is_never_followed(
    middleware, viewer, token, store_dir, tmp_path, target
) -> None:
    """A link named like a profile, to a profile of another store or to any file: the viewer
    showed and served what it points at."""
    linked = profile(middleware, token, "/episodes")
    [path] = store_dir.glob(f"{linked}.*")
    outside = tmp_path / "other-store.profile" if target == "profile" else Path(target)
    if target == "profile":
        path.rename(outside)
    else:
        path.unlink()

    path.symlink_to(outside)

    assert "/episodes" not in viewer.get("/_profiler/").text
    for page in ("", "/profile.html", "/download/session"):
        assert viewer.get(f"/_profiler/{linked}{page}").status_code == 404, page


@pytest.mark.parametrize(
    "path",
    [
        "/_profiler/{id}%00",
        "/_profiler/{id}%2F..%2F..",
        "/_profiler/{id}%5C..",
        "/_profiler/%D9%A2%D9%A0%D9%A2%D9%A4%D9%A0%D9%A1%D9%A0%D9%A1T000000000000-abcdefabcdef",
        "/_profiler/{id}" + "a" * 5000,
        "/_profiler/%FF{id}",
    ],
)
def test_ids_with_odd_characters_are_404(middleware, viewer, token, path) -> None:
    profile_id = profile(middleware, token)

    response = viewer.get(path.format(id=profile_id))

    assert response.status_code == 404
    assert "X-Site" not in response.headers


def test_the_cookie_buttons_set_and_clear_the_profiling_cookie(middleware, token) -> None:
    browser = Client(middleware)

    set_response = browser.post(
        "/_profiler/", query_string={"_profile": token}, data={"cookie": "set"}, headers=SAME_ORIGIN
    )

    assert set_response.status_code == 303 and set_response.headers["Location"] == "/_profiler/"
    cookie = set_response.headers["Set-Cookie"]
    assert cookie.startswith(f"_profile={token}; ")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie)[1])
    assert 590 <= max_age <= 600  # the token's remaining lifetime
    assert browser.get("/_profiler/").status_code == 200  # the cookie alone opens the viewer
    assert run(middleware, "/", headers={"Cookie": f"_profile={token}"}).header("X-Profile-Id")

    clear_response = browser.post("/_profiler/", data={"cookie": "clear"}, headers=SAME_ORIGIN)

    assert (
        "_profile=;" in clear_response.headers["Set-Cookie"]
        and "Max-Age=0" in clear_response.headers["Set-Cookie"]
    )
    assert browser.get("/_profiler/").headers.get("X-Site") == "yes"


def test_a_negative_content_length_reads_nothing(middleware, token) -> None:
    # nginx refuses it, but uWSGI alone (or another server) may pass it on: read(-1) would read
    # the whole body, however large, where the form is at most a few hundred bytes.
    body = io.BytesIO(b"cookie=set&" + b"x" * 1_000_000)
    environ = {"wsgi.input": body, "CONTENT_LENGTH": "-1", "REQUEST_METHOD": "POST"}

    result = run(
        middleware,
        "/_profiler/",
        query_string={"_profile": token},
        headers=SAME_ORIGIN,
        environ_overrides=environ,
    )

    assert body.tell() == 0
    assert "Set-Cookie" not in dict(result.headers)


def test_the_cookie_is_secure_over_https(viewer) -> None:
    response = viewer.post("/_profiler/", data={"cookie": "set"}, base_url="https://example.org/")

    assert response.headers["Set-Cookie"].endswith("; Secure")


def test_an_unknown_form_action_is_a_400(viewer) -> None:
    assert viewer.post("/_profiler/", data={"cookie": "eat"}).status_code == 400


def test_a_token_with_a_line_break_appended_never_reaches_the_cookie(middleware, token) -> None:
    """The signature check skips characters that are not base64, so this token passed, and
    the cookie button wrote what was sent, line break included, into its Set-Cookie header."""
    result = run(
        middleware,
        "/_profiler/",
        method="POST",
        query_string={"_profile": token + "\r\n;"},
        data={"cookie": "set"},
        headers=SAME_ORIGIN,
    )

    assert result.header("Set-Cookie") is None
    assert result.header("X-Site") == "yes"  # no valid token: the site answers, not the viewer


def test_the_endpoint_page_aggregates_time_per_endpoint(middleware, viewer, token) -> None:
    for path in ("/", "/", "/slow"):
        profile(middleware, token, path)

    page = viewer.get("/_profiler/endpoints")

    assert_html5_document(page.text)
    rows = re.findall(
        r"<tr><td>([\w.]+)</td><td class=\"n\">(\d+)</td>(?:<td class=\"n\">([\d.]+)</td>){3}",
        page.text,
    )
    assert sorted(row[:2] for row in rows) == [("pages.index", "2"), ("pages.slow", "1")]
    # Most total time first. Which endpoint that is depends on the machine's load: in one CI
    # run two quick requests together outlasted /slow, when it slept 30 ms.
    totals = [float(row[2]) for row in rows]
    assert totals == sorted(totals, reverse=True)


def test_aggregate_computes_median_p95_and_total() -> None:
    metas = [
        {"endpoint": None, "path": "/feed", "duration_ms": float(ms), "sql_ms": 0.5}
        for ms in range(1, 21)
    ]

    [stats] = aggregate(metas)

    assert (
        stats.endpoint,
        stats.count,
        stats.median_ms,
        stats.p95_ms,
        stats.total_ms,
        stats.sql_ms,
    ) == (
        "/feed",
        20,
        10.5,
        19.0,
        210.0,
        10.0,
    )


def test_a_custom_prefix_moves_the_viewer(make_middleware, token) -> None:
    middleware = make_middleware(site_app, viewer_prefix="/_debug/profiles/")
    headers = {"X-Profile-Token": token}

    assert run(middleware, "/_debug/profiles/", headers=headers).status == "200 OK"
    assert run(middleware, "/_profiler/", headers=headers).header("X-Site") == "yes"


def test_no_secret_reaches_the_store_or_the_pages(middleware, token, store_dir) -> None:
    secrets = [SECRET, token, "hunter2", "sessionvalue42", "Bearer abc.def"]
    profile_id = run(
        middleware,
        "/episodes",
        query_string={"_profile": token, "password": "hunter2", "page": "1"},
        headers={
            "Cookie": f"session=sessionvalue42; _profile={token}",
            "Authorization": "Bearer abc.def",
            "X-Profile-Token": token,
        },
    ).header("X-Profile-Id")
    viewer = TokenBrowser(middleware, token)
    pages = [
        viewer.get(url).data
        for url in (
            "/_profiler/",
            "/_profiler/?sort=duration",
            "/_profiler/endpoints",
            f"/_profiler/{profile_id}",
            f"/_profiler/{profile_id}/profile.html",
            f"/_profiler/{profile_id}/download/speedscope",
            f"/_profiler/{profile_id}/download/session",
        )
    ]
    pages.append(
        viewer.get("/_profiler/", query_string={"_profile": token}).data
    )  # arrived by a token URL
    files = [path.read_bytes() for path in store_dir.iterdir()]
    names = [path.name for path in store_dir.iterdir()]

    for secret in secrets:
        assert not [blob for blob in pages + files if secret.encode() in blob], secret
        assert not [name for name in names if secret in name], secret
    [meta] = stored(store_dir)
    assert meta["query"] == "_profile=[redacted]&password=[redacted]&page=1"
    assert meta["headers"]["Cookie"] == meta["headers"]["Authorization"] == "[redacted]"
    assert meta["headers"]["X-Profile-Token"] == "[redacted]"
