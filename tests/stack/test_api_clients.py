"""What a program reading the API gets through the real stack, whoever answers: the app or nginx.

nginx answers some requests to /api/ itself — a body or a URI too large, the
rate limit, no app server, an app server too slow — and those answers must be
problem details a client can parse, readable from other origins, like the
app's. Validators survive nginx's gzip and micro-cache, and CORS reaches the
frozen feed but no page and not the profiler.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from email.message import Message
from pathlib import Path

import pytest
from request_profiler import make_token

from deploy.stack import Stack
from webapp import READABLE_ANYWHERE
from webapp.db import get_database
from webapp.db.seed import seed
from webapp.errors import STATUS_PHRASES

from .conftest import EPISODES, PROFILER_SECRET, build_site
from .probe_wsgi import BODY_PATH, GC_PATH, SLEEP_PATH
from .support import get, raw_request, wait_until

pytestmark = pytest.mark.stack

ORIGIN = {"Origin": "https://player.example"}


def assert_problem(answer: tuple[int, Message, bytes], status: int) -> dict:
    got, headers, body = answer
    assert got == status
    assert headers["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert (problem["type"], problem["status"]) == ("about:blank", status)
    assert problem["title"] == STATUS_PHRASES[status] and problem["detail"]
    # Readable by a script on another origin: one header, never "*" twice.
    assert headers.get_all("Access-Control-Allow-Origin") == ["*"]
    assert "ETag" in headers["Access-Control-Expose-Headers"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    return problem


# --- nginx's own errors on /api/ ---------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_problem(site_stack: Stack) -> None:
    answer = get(
        site_stack.settings.url + "/api/episodes",
        {"Content-Type": "application/json"} | ORIGIN,
        method="POST",
        body=b"{}" + b" " * 100_000,
    )
    assert_problem(answer, 413)


def test_a_uri_over_the_limit_is_a_414_problem_on_the_api_and_nginxs_page_elsewhere(
    site_stack: Stack,
) -> None:
    long_query = "q=" + "x" * 9_000
    assert_problem(get(site_stack.settings.url + f"/api/episodes?{long_query}", ORIGIN), 414)
    status, headers, body = get(site_stack.settings.url + f"/search?{long_query}", ORIGIN)
    assert status == 414 and headers["Content-Type"].startswith("text/html")
    assert "Access-Control-Allow-Origin" not in headers


#: Requests nginx refuses itself, most before choosing a location: (what is wrong, the request after
#: its request line, the status).
MALFORMED = [
    ("two Content-Lengths", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", 400),
    ("no Host", b"\r\n", 400),
    ("a header too large", b"X-Big: " + b"x" * 9_000 + b"\r\n\r\n", 400),
    ("a cookie too large", b"Cookie: a=" + b"x" * 9_000 + b"\r\n\r\n", 400),
    ("a malformed chunk", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("a Transfer-Encoding nginx lacks", b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
]


@pytest.mark.parametrize(
    ("headers_and_body", "status"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_a_request_nginx_refuses_is_a_problem_on_the_api_and_nginxs_page_elsewhere(
    site_stack: Stack, headers_and_body: bytes, status: int
) -> None:
    host, port = site_stack.settings.host, site_stack.settings.port
    # ORIGIN first, and Host but for the request without one.
    head = b"Origin: https://player.example\r\n"
    if not headers_and_body.startswith(b"\r\n"):
        head += b"Host: localhost\r\n"
    answer = raw_request(host, port, b"POST /api/episodes HTTP/1.1\r\n" + head + headers_and_body)
    assert_problem(answer, status)
    # A profiling token sends a request to the app, but not one nginx refused.
    token = b"X-Profile-Token: " + make_token(PROFILER_SECRET, 300).encode() + b"\r\n"
    answer = raw_request(
        host, port, b"POST /api/episodes HTTP/1.1\r\n" + head + token + headers_and_body
    )
    assert_problem(answer, status)
    got, headers, _ = raw_request(
        host, port, b"POST /search HTTP/1.1\r\n" + head + headers_and_body
    )
    assert got == status and headers["Content-Type"].startswith("text/html")
    assert "Access-Control-Allow-Origin" not in headers


def test_a_request_line_nginx_cannot_parse_gets_its_400_page(site_stack: Stack) -> None:
    """No URI to route on (a TLS hello on the HTTP port): nginx's own page, not a 500."""
    host, port = site_stack.settings.host, site_stack.settings.port
    status, headers, _ = raw_request(host, port, b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n")
    assert status == 400 and headers["Content-Type"].startswith("text/html")
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
def test_a_method_nginx_refuses_itself_is_a_405_problem_with_allow_on_the_api(
    site_stack: Stack, method: bytes
) -> None:
    """nginx answers TRACE and CONNECT before choosing a location: the API's 405, not an HTML
    page without Allow (RFC 9110 requires it on a 405), as the app's 405s carry."""
    host, port = site_stack.settings.host, site_stack.settings.port
    head = b" HTTP/1.1\r\nHost: localhost\r\nOrigin: https://player.example\r\n\r\n"
    answer = raw_request(host, port, method + b" /api/episodes" + head)
    assert_problem(answer, 405)
    assert answer[1].get_all("Allow") == ["GET, HEAD, OPTIONS"]
    got, headers, _ = raw_request(host, port, method + b" /search" + head)
    assert got == 405 and headers["Content-Type"].startswith("text/html")
    assert "Allow" not in headers and "Access-Control-Allow-Origin" not in headers


def test_the_apps_own_problems_pass_through_once(site_stack: Stack) -> None:
    problem = assert_problem(get(site_stack.settings.url + "/api/episodes/99999", ORIGIN), 404)
    assert problem["detail"] == "There is no episode 99999."
    assert_problem(get(site_stack.settings.url + "/api/episodes?per_page=0", ORIGIN), 400)


def test_nginx_and_the_app_let_the_same_paths_be_read_from_other_origins(
    make_stack, tmp_path: Path
) -> None:
    """Two places decide which answers other origins may read: READABLE_ANYWHERE for the app's,
    nginx's $readable_anywhere for its own (here a 502 for every route: no build, no app server).
    They must agree, the feed included when nginx has no frozen copy of it."""
    stack = make_stack(build_dir=tmp_path / "no-build")
    stack.call("stopProcessGroup", "uwsgi")
    readable = re.compile(READABLE_ANYWHERE)
    paths = ["/api/episodes", "/api/episodes/3", "/episodes/rss", "/episodes/12/transcript.html"]
    paths += ["/episodes/12/chapters.json", "/episodes/12/some-slug", "/search", "/health", "/"]
    for path in paths:
        status, headers, _ = get(stack.settings.url + path, ORIGIN)
        assert status == 502, path
        expected = ["*"] if readable.match(path) else None
        assert headers.get_all("Access-Control-Allow-Origin") == expected, path


def test_no_app_server_is_a_502_problem(make_stack) -> None:
    stack = make_stack()
    stack.call("stopProcessGroup", "uwsgi")
    # A URL never asked before: nothing of it in the micro-cache to fall back on.
    assert_problem(get(stack.settings.url + "/api/episodes?page=2&per_page=3", ORIGIN), 502)
    # /health's errors are problem details too (webapp/errors.py), for the monitors that read it;
    # not readable from other origins, as the app's own answers there are not.
    status, headers, body = get(stack.settings.url + "/health", ORIGIN)
    assert (status, headers["Content-Type"]) == (502, "application/problem+json")
    assert json.loads(body)["status"] == 502
    assert "Access-Control-Allow-Origin" not in headers
    # A podcast app's player reads a transcript from another origin: nginx's 502 too.
    status, headers, _ = get(stack.settings.url + "/episodes/12/transcript.html", ORIGIN)
    assert (status, headers.get_all("Access-Control-Allow-Origin")) == (502, ["*"])


def test_an_app_server_too_slow_is_a_504_problem(make_stack) -> None:
    # harakiri off: nginx gives up first, after uwsgi_read_timeout (harakiri + 5 = 5 s).
    stack = make_stack(
        uwsgi_options={"harakiri": "0", "module": "tests.stack.probe_wsgi:application"}
    )
    assert_problem(get(stack.settings.url + f"{SLEEP_PATH}?seconds=8", ORIGIN, timeout=30), 504)


def test_past_the_rate_limit_is_a_429_problem_with_retry_after(make_stack) -> None:
    stack = make_stack(nginx_options={"api_rate_limit": 1})  # one a second, bursts of two
    url = stack.settings.url
    answers = [get(url + f"/api/episodes/{n}", ORIGIN) for n in range(1, 9)]
    limited = [answer for answer in answers if answer[0] == 429]
    assert limited and answers[0][0] == 200, [answer[0] for answer in answers]
    assert_problem(limited[0], 429)
    assert limited[0][1]["Retry-After"] == "1"
    # Only the API is limited: pages are served on.
    assert all(get(url + "/")[0] == 200 for _ in range(5))


def answered_early(client: socket.socket) -> bytes:
    """What nginx has sent a client that is still sending its body: nothing, if it is held."""
    timeout = client.gettimeout()
    client.setblocking(False)
    try:
        return client.recv(200)
    except BlockingIOError:
        return b""
    finally:
        client.settimeout(timeout)


def all_idle(stack: Stack) -> bool:
    """Whether every uWSGI worker of the stack is waiting for a request."""
    statuses = {w["status"] for i in stack.instances for w in i.stats()["workers"]}
    return statuses == {"idle"}


def test_slow_clients_hold_no_worker_and_at_most_the_limit_per_address(make_stack) -> None:
    """A slow body holds an nginx connection, never a uWSGI worker, and one address holds at
    most connections_per_address of them; a slow request head is cut at client_header_timeout."""
    stack = make_stack(
        nginx_options={"connections_per_address": 3, "client_header_timeout": "1s"},
        # A route that reads the body (the site has none): a worker given the request before
        # its body would wait on the client.
        uwsgi_options={"module": "tests.stack.probe_wsgi:application"},
    )
    url, port = stack.settings.url, int(stack.settings.url.rsplit(":", 1)[1])
    head = f"POST {BODY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{{"
    slow: list[socket.socket] = []
    refused: list[bytes] = []

    def hold_one() -> bool:
        """Opens one more slow client; true once three are held."""
        client = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        client.sendall(head.encode())  # and never the rest of the body
        try:
            # A 429 if a request of the stack's own start still counted: nginx may count one for
            # a few milliseconds after its client has the answer (about 1 start in 20 here).
            refused.append(client.recv(200))
        except TimeoutError:
            client.settimeout(10)
            slow.append(client)
            return len(slow) == 3
        client.close()
        return False

    try:
        # Well within client_body_timeout (10 s), after which nginx drops them.
        assert wait_until(hold_one, timeout=8), refused
        # A request counts a moment after its answer, not for seconds.
        assert len(refused) <= 4, refused
        # The fourth request from the address is refused, for a page as for the API.
        assert get(url + "/")[0] == 429
        # nginx reads a body whole before passing the request on: every worker is idle while
        # the three are held.
        assert wait_until(lambda: all_idle(stack), timeout=15)
        assert_problem(get(url + "/api/episodes/1", ORIGIN), 429)
        assert not any(answered_early(client) for client in slow)
    finally:
        for client in slow:
            client.close()
    assert wait_until(lambda: get(url + "/")[0] == 200, timeout=15)
    status, _, body = get(url + BODY_PATH, method="POST", body=b"x" * 1000)
    assert (status, body) == (200, b"1000\n")  # the route does read what a client sends
    # A head trickled a byte at a time is cut once client_header_timeout has passed.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # reset (reset_timedout_connection), or closed
            for byte in b"X-Slow: " + b"a" * 100:
                time.sleep(0.2)
                client.sendall(bytes([byte]))
                client.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    if client.recv(1) == b"":
                        raise ConnectionResetError("closed")
        assert (
            time.monotonic() - started < 8
        )  # the 20 s it would take, less a busy machine's delays


# --- Validators through nginx's gzip and micro-cache ----------------------------------------


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_api_answers_revalidate_through_nginx(site_stack: Stack, encoding: str | None) -> None:
    url = site_stack.settings.url + "/api/episodes?page=2&per_page=10"
    base = {"Accept-Encoding": encoding} if encoding else {}
    status, headers, _ = get(url, base)
    assert status == 200 and headers["Cache-Control"] == "public, max-age=60"
    etag = headers["ETag"]
    # nginx weakens the app's strong ETag when it gzips the answer; a 304 either way.
    assert etag.startswith('W/"') if encoding else etag.startswith('"')
    for _ in range(2):  # from the app, then from the micro-cache
        status, headers, body = get(url, base | {"If-None-Match": etag})
        assert (status, body) == (304, b"")
        assert headers["ETag"] == etag
    link = get(url)[1]["Link"]
    assert 'rel="next"' in link and "<https://podcast.test/api/episodes?page=3&per_page=10>" in link


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("encoding", [None, "gzip", "gzip;q=0", "br, gzip;q=0.5"])
@pytest.mark.parametrize(
    "path", ["/api/episodes/5", "/api/openapi.json", "/episodes/13/transcript.html"]
)
def test_a_304_through_nginx_has_the_etag_and_vary_of_the_200(
    site_stack: Stack, path: str, encoding: str | None, method: str
) -> None:
    """RFC 9110 15.4.5: a 304 carries the ETag and Vary the 200 to the same request would.
    nginx makes the 304 before its gzip filter runs, which for the 200 weakens the ETag (W/,
    RFC 9110 8.8.3: the gzip bytes are not the identity ones) and adds Vary: the 304 had the
    identity answer's strong ETag and no Vary, which a cache holding the gzip answer cannot
    match to it (RFC 9111 4.3.4). A HEAD gets the headers of the GET, gzip's included."""
    url = site_stack.settings.url + path
    base = {"Accept-Encoding": encoding} if encoding else {}
    status, headers, _ = get(url, base, method=method)
    assert status == 200
    gzipped = encoding in ("gzip", "br, gzip;q=0.5")
    assert (headers.get("Content-Encoding") == "gzip") == gzipped
    assert headers["ETag"].startswith('W/"') == gzipped
    for _ in range(2):  # the micro-cache's entry, whether or not this request made it
        conditional = base | {"If-None-Match": headers["ETag"]}
        status, not_modified, body = get(url, conditional, method=method)
        assert (status, body) == (304, b"")
        assert not_modified.get_all("ETag") == [headers["ETag"]]
        assert not_modified.get_all("Vary") == headers.get_all("Vary") == ["Accept-Encoding"]


def test_an_edit_shows_within_a_second_after_a_quiet_spell(make_stack, tmp_path: Path) -> None:
    """The micro-cache keeps an answer one second: the first request after that gets the app's
    answer, not the copy from before the quiet spell (up to `inactive`, 10 minutes, old)
    while nginx refreshes it in the background."""
    own = build_site(f"sqlite:///{tmp_path}/own.sqlite3", tmp_path / "own")
    try:
        stack = make_stack(own)
        url = stack.settings.url + "/api/episodes?per_page=5"
        assert json.loads(get(url)[2])["total"] == EPISODES
        time.sleep(2)  # the micro-cache's copy is past its second
        with get_database(own.app).session() as session:
            seed(session, EPISODES + 1)
        status, headers, body = get(url)
        assert (status, json.loads(body)["total"]) == (200, EPISODES + 1), headers["X-Cache-Status"]
    finally:
        get_database(own.app).close()


# --- CORS --------------------------------------------------------------------------------


def test_other_origins_read_the_api_the_feed_and_transcripts_not_pages(
    site_stack: Stack, site
) -> None:
    url = site_stack.settings.url
    episode = (site.build_dir / "nginx" / "episodes.map").read_text().split(";")[0].split()[1]
    for path in [
        "/api/episodes/3",
        "/api/episodes/3",
        "/episodes/rss",
        "/episodes/12/transcript.html",
    ]:
        _, headers, _ = get(url + path, ORIGIN)  # the second /api/ one from the micro-cache
        assert headers.get_all("Access-Control-Allow-Origin") == ["*"], path
        assert "ETag" in headers["Access-Control-Expose-Headers"], path
    for path in ["/", episode, "/episodes/", "/static/style.css", "/search?q=python", "/no-such"]:
        _, headers, _ = get(url + path, ORIGIN)
        assert "Access-Control-Allow-Origin" not in headers, path
    token = {"X-Profile-Token": make_token(PROFILER_SECRET, 300)}
    _, headers, _ = get(url + "/_profiler/", ORIGIN | token)
    assert "Access-Control-Allow-Origin" not in headers


def test_a_range_past_the_end_of_the_feed_is_readable_once(site_stack: Stack) -> None:
    """nginx adds its headers to the frozen feed, then finds the range unsatisfiable and sends
    a 416 through its headers again: one Access-Control-Allow-Origin, not "*, *" (which a
    browser refuses), as for any answer."""
    status, headers, _ = get(
        site_stack.settings.url + "/episodes/rss",
        ORIGIN | {"Range": "bytes=999999999-"},
    )
    assert status == 416
    assert headers.get_all("Access-Control-Allow-Origin") == ["*"]
    assert headers.get_all("Access-Control-Expose-Headers") == ["ETag, Link, Retry-After"]


@pytest.mark.parametrize("path", ["/api/episodes/4", "/episodes/12/transcript.html"])
def test_preconditions_pass_the_micro_cache_to_the_app(site_stack: Stack, path: str) -> None:
    """If-Match and If-Unmodified-Since bypass the micro-cache: a false If-Match is the app's
    412, a precondition nginx fails (any If-Unmodified-Since: the answers have no Last-Modified)
    nginx's, both readable from other origins with each header once. Through the cache, a 412
    storing nothing, a stream of false If-Matches kept the entry expired for everyone else."""
    url = site_stack.settings.url + path
    since = {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    for precondition in ({"If-Match": '"not-the-etag"'}, since):
        assert wait_until(lambda: get(url)[1]["X-Cache-Status"] == "HIT", timeout=5)  # cached
        answer = get(url, ORIGIN | precondition)
        status, headers, _ = answer
        assert (status, headers["X-Cache-Status"]) == (412, "BYPASS"), precondition
        if path.startswith("/api/"):
            assert_problem(answer, 412)
        assert headers.get_all("Access-Control-Allow-Origin") == ["*"]
        assert headers.get_all("Access-Control-Expose-Headers") == ["ETag, Link, Retry-After"]
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"]
        # The entry the others are served is the one the plain GET left, not expired.
        assert get(url)[1]["X-Cache-Status"] in ("HIT", "EXPIRED", "MISS")
    assert get(url, ORIGIN | {"If-Match": "*"})[0] == 200


# The feed too: a script revalidating it sends If-None-Match, which is not CORS-safelisted.
@pytest.mark.parametrize("path", ["/api/episodes", "/episodes/rss", "/episodes/12/transcript.html"])
def test_a_preflight_through_nginx(site_stack: Stack, path: str) -> None:
    status, headers, _ = get(
        site_stack.settings.url + path,
        ORIGIN
        | {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
        method="OPTIONS",
    )
    assert status == 204
    assert headers.get_all("Access-Control-Allow-Origin") == ["*"]
    assert "If-None-Match" in headers["Access-Control-Allow-Headers"]
    assert "GET" in headers["Access-Control-Allow-Methods"]


def test_an_answer_marked_no_store_is_never_micro_cached(make_stack) -> None:
    """The micro-cache ignores the app's Cache-Control lifetimes, but not a no-store."""
    stack = make_stack(uwsgi_options={"module": "tests.stack.probe_wsgi:application"})
    url = stack.settings.url
    gc_answers = [get(url + GC_PATH) for _ in range(4)]  # the probe sends no-store
    assert {headers.get("X-Cache-Status") for _, headers, _ in gc_answers} == {"MISS"}
    api_answers = [get(url + "/api/episodes/2")[1].get("X-Cache-Status") for _ in range(4)]
    assert "HIT" in api_answers  # max-age=60 from the app, one second in the micro-cache
