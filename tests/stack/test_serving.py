"""The real stack answers as the app would, faster: frozen files from nginx, the rest from Flask.

Every expected answer comes from the in-process app on the same database, so these tests
check nginx's config against the app, not against numbers copied into the test.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import ssl
import warnings
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from request_profiler import make_token
from werkzeug.routing import Rule

from deploy.stack import Stack

from .conftest import PROFILER_SECRET, Site
from .support import get, raw_request, timed_requests, wait_until

pytestmark = pytest.mark.stack

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; media-src 'self' https:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def episode_paths(site: Site) -> list[str]:
    """Canonical episode paths from the build's redirect map."""
    lines = (site.build_dir / "nginx" / "episodes.map").read_text().split(";")
    return [line.split()[1] for line in lines if line.strip()]


def app_get(site: Site, path: str, headers: dict[str, str] | None = None):
    return site.app.test_client().get(path, headers=headers or {})


def frozen(site: Site, name: str) -> bytes:
    return (site.build_dir / name).read_bytes()


def is_nginx_etag(headers: Message) -> bool:
    # nginx's ETag for a file: "<mtime hex>-<size hex>"; the app sends none for pages.
    return bool(re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', headers.get("ETag", "")))


# --- Frozen pages from nginx, dynamic routes from Flask ---------------------


def test_frozen_pages_are_the_build_files_served_by_nginx(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    episode = episode_paths(site)[3]
    for path, name in [
        ("/", "index.html"),
        ("/episodes/", "episodes/index.html"),
        (episode, episode[1:] + ".html"),
        ("/episodes/rss", "episodes/rss.xml"),
        ("/static/style.css", "static/style.css"),
    ]:
        status, headers, body = get(url + path)
        assert status == 200, path
        assert body == frozen(site, name), path
        assert is_nginx_etag(headers) and headers["Last-Modified"], path
        # The frozen bytes are what the app itself serves at that URL.
        assert body == app_get(site, path).data, path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_a_method_a_frozen_file_does_not_take_is_answered_as_the_app_answers_it(
    site_stack: Stack, site: Site, method: str
) -> None:
    """nginx serves a file to GET and HEAD only. Its own 405 for any other method named no
    method in Allow (RFC 9110 15.5.6 requires it), and it refused the OPTIONS the app answers
    with a 204 and Allow: the app answers those methods, as it does for the feed."""
    url = site_stack.settings.url
    episode = episode_paths(site)[3]
    number = episode.split("/")[2]
    # An episode's other URLs too, which a GET is redirected from: no redirect for these methods.
    redirected = [f"/episodes/{number}", f"/episodes/{number}/not-the-slug"]
    for path in ["/", "/episodes/", episode, *redirected, "/static/style.css", "/artwork.png"]:
        status, headers, _ = get(
            url + path, method=method, body=b"" if method != "OPTIONS" else None
        )
        expected = site.app.test_client().open(path, method=method)
        assert (path, status) == (path, expected.status_code), path
        assert status in (204, 405), path
        allowed = set(headers.get("Allow", "").split(", "))
        assert allowed == set(expected.headers["Allow"].split(", ")) >= {"GET", "HEAD"}, path


def test_dynamic_routes_reach_flask(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    for path in [
        "/api/episodes?page=2&per_page=5",
        "/api/episodes/7",
        "/search?q=python",
        "/health",
    ]:
        status, headers, body = get(url + path)
        expected = app_get(site, path)
        assert status == expected.status_code == 200, path
        assert body == expected.data, path
        assert headers["Content-Type"] == expected.headers["Content-Type"], path
        assert not is_nginx_etag(headers)


def _sample_url(rule: Rule) -> str:
    """A concrete URL for a url_map rule: 1 for numbers, a word for strings."""
    return re.sub(
        r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>",
        lambda m: (
            "1" if m[1] in ("int", "float") else ("style.css" if m[2] == "filename" else "word")
        ),
        rule.rule,
    )


def test_every_app_route_still_reaches_the_app(site_stack: Stack, site: Site) -> None:
    """nginx answers unknown paths itself (frozen 404): a new route of the app must be routed."""
    url = site_stack.settings.url
    for rule in site.app.url_map.iter_rules():
        path = _sample_url(rule)
        status, _, _ = get(url + path)
        expected = app_get(site, path).status_code
        assert status == expected, f"{rule.rule}: nginx {status}, app {expected} for {path}"


def test_unknown_paths_get_the_frozen_404_page(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    for path in [
        "/no-such-page",
        "/episodes/1/a/b",
        "/manifest.json",
        "/nginx/episodes.map",
        "/.freeze-state.json",
        "/index.html.gz/x",
    ]:
        status, headers, body = get(url + path)
        assert status == 404, path
        assert body == frozen(site, "404.html"), path
        assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_build_files_are_not_served_under_their_own_names(site_stack: Stack, site: Site) -> None:
    """The app has no URL for a page's file (index.html, rss.xml, a .gz sibling): neither has nginx.

    nginx served them: the .gz as application/octet-stream (gzip bytes with no
    Content-Encoding), rss.xml as text/xml, and /404 (try_files $uri.html) as a 200."""
    url = site_stack.settings.url
    for path in [
        "/404",
        "/index",
        "/index.html",
        "/index.html.gz",
        "/404.html.gz",
        "/episodes/index",
        "/episodes/index.html",
        "/episodes/index.html.gz",
        "/episodes/rss.xml",
        "/episodes/rss.xml.gz",
        "/static/style.css.gz",
    ]:
        status, headers, body = get(url + path, {"Accept-Encoding": "gzip"})
        assert status == app_get(site, path).status_code == 404, path
        assert gzip.decompress(body) == frozen(site, "404.html"), path
        assert headers["Content-Type"] == "text/html; charset=utf-8", path
    # Their URLs are served as ever, precompressed too.
    for path, name in [("/", "index.html"), ("/episodes/rss", "episodes/rss.xml")]:
        status, _, body = get(url + path, {"Accept-Encoding": "gzip"})
        assert (status, body) == (200, frozen(site, name + ".gz")), path


def test_unknown_episode_numbers_fall_through_to_the_app(site_stack: Stack, site: Site) -> None:
    status, _, body = get(site_stack.settings.url + "/episodes/999999")
    expected = app_get(site, "/episodes/999999")
    assert status == expected.status_code == 404
    assert body == expected.data and b"There is no episode 999999." in body


# --- Headers: types, compression, validators ----------------------------------


def test_content_types_match_the_app(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    episode = episode_paths(site)[0]
    expected = {
        "/": "text/html; charset=utf-8",
        episode: "text/html; charset=utf-8",
        "/episodes/rss": "application/rss+xml; charset=utf-8",
        "/static/style.css": "text/css; charset=utf-8",
        "/api/episodes": "application/json",  # no charset: RFC 8259 defines none
    }
    for path, content_type in expected.items():
        status, headers, _ = get(url + path)
        assert status == 200
        assert headers["Content-Type"] == content_type, path
        assert headers["Content-Type"].split(";")[0] == app_get(site, path).mimetype, path


@pytest.mark.parametrize(
    "path", ["/", "/episodes/rss", "/static/style.css", "/api/episodes", "/search?q=data"]
)
def test_gzip_for_clients_that_accept_it(site_stack: Stack, path: str) -> None:
    url = site_stack.settings.url + path
    status, plain_headers, plain = get(url)
    assert status == 200 and "Content-Encoding" not in plain_headers
    status, headers, compressed = get(url, {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in headers["Vary"]
    assert gzip.decompress(compressed) == plain
    assert len(compressed) < len(plain)


def test_frozen_files_are_sent_precompressed(site_stack: Stack, site: Site) -> None:
    """gzip_static: the bytes on the wire are the build's .gz sibling, not a fresh compression."""
    _, _, body = get(site_stack.settings.url + "/episodes/rss", {"Accept-Encoding": "gzip"})
    assert body == frozen(site, "episodes/rss.xml.gz")


@pytest.mark.parametrize("path", ["/episodes/rss", "/", "/episodes/"])
@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_conditional_get_answers_304(
    site_stack: Stack, site: Site, path: str, encoding: str | None
) -> None:
    url = site_stack.settings.url + path
    base = {"Accept-Encoding": encoding} if encoding else {}
    status, headers, _ = get(url, base)
    assert status == 200
    etag, last_modified = headers["ETag"], headers["Last-Modified"]
    for validator in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        status, headers304, body = get(url, base | validator)
        assert status == 304, validator
        assert body == b""
        assert headers304["ETag"] == etag
    status, _, _ = get(url, base | {"If-None-Match": '"something-else"'})
    assert status == 200


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_the_feed_has_one_set_of_validators_whether_nginx_or_the_app_answers(
    site_stack: Stack, site: Site, encoding: str | None
) -> None:
    """A podcast app whose polls reach nginx's frozen file, then the app (here: a profiled
    request, which nginx hands to the app), then nginx again, never downloads the feed twice."""
    url = site_stack.settings.url + "/episodes/rss"
    base = {"Accept-Encoding": encoding} if encoding else {}
    to_app = {"X-Profile-Token": make_token(PROFILER_SECRET, 300)}
    _, from_nginx, nginx_body = get(url, base)
    _, from_app, app_body = get(url, base | to_app)
    assert not from_nginx.get("X-Profile-Id") and from_app.get("X-Profile-Id")
    assert is_nginx_etag(from_nginx) and app_body == nginx_body
    for name in ("ETag", "Last-Modified", "Content-Encoding", "Content-Type"):
        assert from_app.get(name) == from_nginx.get(name), name
    # The profiled answer is for no cache to keep; the app's own lifetime is nginx's.
    assert from_app["Cache-Control"] == "no-store"
    assert app_get(site, "/episodes/rss").headers["Cache-Control"] == from_nginx["Cache-Control"]
    for validators in (
        {"If-None-Match": from_nginx["ETag"]},
        {"If-Modified-Since": from_nginx["Last-Modified"]},
        {"If-None-Match": from_nginx["ETag"], "If-Modified-Since": from_nginx["Last-Modified"]},
    ):
        # nginx's validators, sent to the app; the app's, sent to nginx.
        status, headers, body = get(url, base | to_app | validators)
        assert (status, body, headers["ETag"]) == (304, b"", from_nginx["ETag"]), validators
        status, headers, body = get(url, base | validators)
        assert (status, body, headers["ETag"]) == (304, b"", from_app["ETag"]), validators
    # Preconditions that fail: a 412 from either, before If-None-Match's 304.
    for validators in (
        {"If-Match": '"other"', "If-None-Match": from_nginx["ETag"]},
        {"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
    ):
        assert get(url, base | to_app | validators)[0] == 412, validators
        assert get(url, base | validators)[0] == 412, validators


def test_cache_lifetimes(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    assert (
        get(url + "/episodes/rss")[1]["Cache-Control"]
        == app_get(site, "/episodes/rss").headers["Cache-Control"]
    )
    assert get(url + "/")[1]["Cache-Control"] == "public, max-age=60"
    assert get(url + "/static/style.css")[1]["Cache-Control"] == "public, max-age=604800"
    assert (
        get(url + "/static/style.css?v=1")[1]["Cache-Control"]
        == "public, max-age=31536000, immutable"
    )
    # Answers from the app keep the app's own (none for the API).
    assert "Cache-Control" not in get(url + "/health")[1]


def test_a_micro_cache_hit_keeps_the_apps_one_cache_control(site_stack: Stack, site: Site) -> None:
    """A hit has no upstream address, as a frozen file has none: nginx must still not add a
    frozen page's lifetime to the app's (two max-ages, which a cache may take as stale)."""
    path = "/episodes/12/transcript.html"
    expected = app_get(site, path).headers["Cache-Control"]
    answers = [get(site_stack.settings.url + path)[1] for _ in range(4)]
    assert "HIT" in {headers.get("X-Cache-Status") for headers in answers}
    for headers in answers:
        assert headers.get_all("Cache-Control") == [expected], headers.get("X-Cache-Status")


# --- Redirects ------------------------------------------------------------


def test_episode_redirects_match_the_app(site_stack: Stack, site: Site) -> None:
    url = site_stack.settings.url
    for canonical in episode_paths(site)[:10]:
        number = canonical.split("/")[2]
        for variant in [f"/episodes/{number}", f"/episodes/{number}/not-the-slug"]:
            status, headers, _ = get(url + variant)
            expected = app_get(site, variant)
            assert status == expected.status_code == 301, variant
            assert headers["Location"] == expected.headers["Location"] == canonical, variant
        status, _, _ = get(url + canonical)
        assert status == 200
    # The generated site-wide rules (nginx/redirects.conf) too.
    status, headers, _ = get(url + "/episodes")
    expected = app_get(site, "/episodes")
    # Werkzeug makes its slash redirect absolute (http://localhost/…); nginx's is a path, as
    # the app's 301s are.
    assert (status, headers["Location"]) == (
        expected.status_code,
        urlsplit(expected.headers["Location"]).path,
    )


# --- Security headers ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/episodes/rss",
        "/api/episodes",
        "/no-such-page",
        "/episodes/3",
        "/static/style.css",
        "/health",
    ],
)
def test_security_headers_on_every_kind_of_answer(site_stack: Stack, path: str) -> None:
    _, headers, _ = get(site_stack.settings.url + path)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert headers.get_all("Content-Security-Policy") == [CSP]
    assert headers["Server"] == "nginx"  # server_tokens off: no version
    assert "Strict-Transport-Security" not in headers  # not for a self-signed localhost


#: Every header nginx adds to every answer (headers.conf), and those it adds to what other
#: origins may read.
ADDED_HEADERS = ["X-Content-Type-Options", "Referrer-Policy", "Content-Security-Policy"]
CORS_HEADERS = ["Access-Control-Allow-Origin", "Access-Control-Expose-Headers"]


@pytest.mark.parametrize(
    "path", ["/", "episode", "/static/style.css", "/episodes/rss", "/artwork.png"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_range_past_the_end_of_a_frozen_file_is_a_416_with_each_header_once(
    site_stack: Stack, site: Site, path: str, method: str
) -> None:
    """nginx turns a 200 into this 416 after its headers were added, and adds them again
    unless headers.conf's maps see the second pass: "Access-Control-Allow-Origin: *, *"."""
    path = episode_paths(site)[0] if path == "episode" else path
    status, headers, _ = get(
        site_stack.settings.url + path, {"Range": "bytes=999999999-"}, method=method
    )
    assert status == 416
    assert headers["Content-Range"].startswith("bytes */")
    for name in ADDED_HEADERS:
        assert len(headers.get_all(name, [])) == 1, (name, headers.get_all(name))
    readable = path == "/episodes/rss"
    for name in CORS_HEADERS:
        assert len(headers.get_all(name, [])) == readable, (name, headers.get_all(name))
    # A range that fits is a 206 with the same headers, once.
    status, headers, body = get(site_stack.settings.url + path, {"Range": "bytes=0-9"})
    assert (status, len(body)) == (206, 10)
    for name in ADDED_HEADERS + (CORS_HEADERS if readable else []):
        assert len(headers.get_all(name, [])) == 1, (name, headers.get_all(name))


def test_pages_satisfy_their_content_security_policy(site: Site) -> None:
    """default-src 'none', style-src 'self': no script, no inline style, nothing from elsewhere."""
    for page in sorted(site.build_dir.rglob("*.html")):
        html = page.read_text()
        assert "<script" not in html and "<style" not in html and " style=" not in html, page
        assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == [
            "/static/style.css"
        ], page
        for action in re.findall(r'<form[^>]*action="([^"]+)"', html):
            assert action.startswith("/"), page
        for source in re.findall(r'<(?:img|audio|video|source|iframe)[^>]*src="([^"]+)"', html):
            assert source.startswith(("/", "https://")), page


# --- Big requests --------------------------------------------------------------


def test_large_request_headers_reach_the_app(site_stack: Stack) -> None:
    """uWSGI's default 4 KB buffer would drop this request (nginx: 502); buffer-size is 32 KB.

    (nginx's own limit, 8 KB per header line by default, stays: a cookie is not a database.)"""
    # A URL of its own, so the answer cannot come from the micro-cache.
    status, _, body = get(
        site_stack.settings.url + "/api/episodes?page=1&per_page=17",
        {"Cookie": "preferences=" + "x" * 6_000},
    )
    assert status == 200
    assert json.loads(body)["per_page"] == 17


def test_every_request_nginx_accepts_fits_uwsgis_buffer(site_stack: Stack) -> None:
    """Heads within nginx's limits (a head of 32 KB, a request line of 8 KB, a thousand
    headers) reach the app.

    uWSGI dropped them (nginx: 502) with a buffer-size of 32 KB, or its default max-vars (64),
    and nginx counted each as a failure of its instance: two such requests marked both down,
    and every other client got a 502 for fail_timeout."""
    host, port = site_stack.settings.host, site_stack.settings.port
    for target, count, expected in [
        ("/api/episodes?page=1&per_page=13", 280, 200),
        ("/api/" + "a" * 7_900, 200, 404),  # the path reaches uWSGI three times (uwsgi_params)
        ("/api/episodes?page=1&per_page=14", -990, 200),  # as many short headers
    ]:
        value = "v" * 100 if count > 0 else ""
        headers = "".join(f"X{i}: {value}\r\n" for i in range(abs(count)))
        request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
        status, _, _ = raw_request(host, port, request.encode())
        assert status == expected, target[:40]
    assert get(site_stack.settings.url + "/health")[0] == 200


# --- HTTPS ------------------------------------------------------------------------


def https_address(stack: Stack) -> tuple[str, int]:
    host, port = stack.settings.nginx_options["https_listen"].rsplit(":", 1)
    return host, int(port)


def test_https_with_http2_and_modern_tls(site_stack: Stack, certificate: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(https_address(site_stack), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_https_serves_the_same_site(
    site_stack: Stack, site: Site, tls_context: ssl.SSLContext
) -> None:
    base = "https://{}:{}".format(*https_address(site_stack))
    for path, expected in [
        ("/", frozen(site, "index.html")),
        ("/api/episodes/3", app_get(site, "/api/episodes/3").data),
    ]:
        status, headers, body = get(base + path, context=tls_context)
        assert status == 200 and body == expected, path
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(base + "/episodes/3", context=tls_context)
    assert status == 301 and headers["Location"] == app_get(site, "/episodes/3").headers["Location"]


def test_tls_below_1_2_is_refused(site_stack: Stack, certificate: tuple[Path, Path]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certificate[0]))
    try:
        with warnings.catch_warnings():  # deprecated, which is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with (
        socket.create_connection(https_address(site_stack), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


# --- Micro-cache and the profiler's token path ----------------------------------------


def test_api_answers_are_micro_cached(site_stack: Stack) -> None:
    url = site_stack.settings.url + "/api/episodes?page=3&per_page=4"
    statuses = [get(url)[1].get("X-Cache-Status") for _ in range(5)]
    assert statuses[0] in ("MISS", "EXPIRED", "HIT")
    assert "HIT" in statuses  # five requests in a row, one second of validity


def carried(carrier: str, token: str) -> tuple[dict[str, str], str]:
    """The headers and the query string that carry ``token`` in a header, a cookie or the query."""
    headers = {
        "header": {"X-Profile-Token": token},
        "cookie": {"Cookie": f"theme=dark; _profile={token}"},
        "query": {},
    }[carrier]
    return headers, f"?_profile={token}" if carrier == "query" else ""


@pytest.mark.parametrize("carrier", ["header", "cookie", "query"])
def test_profiling_tokens_reach_the_app_past_frozen_files_and_cache(
    site_stack: Stack, site: Site, carrier: str
) -> None:
    url = site_stack.settings.url
    headers, query = carried(carrier, make_token(PROFILER_SECRET, 300))
    for path in ["/", "/api/episodes", episode_paths(site)[1]]:
        for _ in range(2):  # the second time too: never from the micro-cache
            status, response_headers, _ = get(url + path + query, headers)
            assert status == 200, path
            assert response_headers.get("X-Profile-Id"), f"{path} did not reach the profiler"
            assert "X-Cache-Status" not in response_headers
            # Nor kept by any cache further on: it is this token holder's answer.
            assert response_headers.get_all("Cache-Control") == ["no-store"], path
            assert not is_nginx_etag(response_headers)


#: Tokens the app refuses: signed with another secret, and expired.
INVALID_TOKENS = {
    "forged": make_token("another-site's-secret-of-32-bytes-or-more", 300),
    "expired": make_token(PROFILER_SECRET, 60, now=1_000_000_000),
}


@pytest.mark.parametrize("carrier", ["header", "cookie", "query"])
@pytest.mark.parametrize("invalid", INVALID_TOKENS)
def test_an_invalid_token_is_served_as_if_there_were_none(
    site_stack: Stack, site: Site, carrier: str, invalid: str
) -> None:
    url = site_stack.settings.url
    headers, query = carried(carrier, INVALID_TOKENS[invalid])
    episode = episode_paths(site)[1]
    for path, name in [("/", "index.html"), (episode, episode[1:] + ".html")]:
        status, response_headers, body = get(url + path + query, headers)
        # The app said no (X-Accel-Redirect), and nginx served the frozen file.
        assert (status, body) == (200, frozen(site, name)), path
        assert is_nginx_etag(response_headers) and "X-Profile-Id" not in response_headers
    statuses = [
        get(url + "/api/episodes?page=2" + query.replace("?", "&"), headers)[1].get(
            "X-Cache-Status"
        )
        for _ in range(3)
    ]
    assert "HIT" in statuses  # the micro-cache again
    status, _, body = get(url + "/no-such-page" + query, headers)
    assert (status, body) == (404, frozen(site, "404.html"))
    # Routed again by @unprofiled's `rewrite ^ $uri last` with the path decoded: a CR LF in
    # it (what gixy warns of) stays in the path, never a header.
    status, response_headers, body = get(url + "/no-such%0d%0aX-Injected:%20yes" + query, headers)
    assert (status, body) == (404, frozen(site, "404.html"))
    assert "X-Injected" not in response_headers
    status, _, body = get(url + "/health" + query, headers)  # what only the app answers
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_a_method_nginx_would_pass_on_is_left_to_the_app(site_stack: Stack) -> None:
    # X-Accel-Redirect would turn it into a GET: the app answers it itself.
    cookie = {"Cookie": f"_profile={INVALID_TOKENS['forged']}"}
    url = site_stack.settings.url + "/api/episodes"

    assert get(url, cookie, method="POST")[0] == get(url, method="POST")[0] == 405


def test_an_invalid_token_costs_no_more_than_the_cheapest_app_route(site_stack: Stack) -> None:
    """A frozen page with a bogus cookie, against /health, the app's cheapest route.

    Before, the bogus cookie made the app render the page. Interleaved rounds
    on keep-alive connections, compared as the median of per-round ratios.
    """
    url = site_stack.settings.url
    bogus = {"Cookie": f"_profile={INVALID_TOKENS['forged']}"}
    kinds = {
        "frozen page, bogus cookie": ("/episodes/", bogus),
        "/health": ("/health", {}),
        "frozen page, no cookie": ("/episodes/", {}),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(7):
        for kind, (path, headers) in kinds.items():
            seconds[kind].append(timed_requests(url, path, headers, count=40))
    ratios = sorted(
        bogus_time / health_time
        for bogus_time, health_time in zip(
            seconds["frozen page, bogus cookie"], seconds["/health"], strict=True
        )
    )
    per_request = {kind: sorted(times)[3] / 40 * 1e6 for kind, times in seconds.items()}
    print(f"per request (median round, us): {per_request}; bogus / health per round: {ratios}")
    assert ratios[len(ratios) // 2] <= 1.0, (per_request, ratios)


def test_profiler_viewer_through_nginx_keeps_its_own_csp(site_stack: Stack) -> None:
    token = make_token(PROFILER_SECRET, 300)
    url = site_stack.settings.url
    get(url + "/api/episodes/2", {"X-Profile-Token": token})  # at least one stored profile
    # Stored by the writer thread, soon after the answer: the list shows it within a second.
    assert wait_until(
        lambda: b"<tbody><tr" in get(url + "/_profiler/", {"X-Profile-Token": token})[2],
        timeout=10,
    )
    status, headers, body = get(url + "/_profiler/", {"X-Profile-Token": token})
    assert status == 200
    policies = headers.get_all("Content-Security-Policy")
    assert len(policies) == 1 and policies[0] != CSP  # the viewer's, not nginx's
    assert "X-Cache-Status" not in headers
    assert b"<tbody><tr" in body  # the stored profiles are listed
    # Without a token the viewer is closed, and nginx caches nothing of it.
    status, headers, _ = get(url + "/_profiler/")
    assert status in (401, 403, 404)
    assert "X-Cache-Status" not in headers


def test_profiler_pages_through_nginx_keep_their_own_referrer_policy(
    site_stack: Stack, site: Site
) -> None:
    """The viewer's and the inline profile's no-referrer is the one policy the browser applies.

    Their URL may hold the token (``?_profile=``). Browsers apply the last of several
    Referrer-Policy values, so nginx's strict-origin-when-cross-origin added after the app's
    no-referrer used to win, and each link of the page sent the token on as its Referer.
    """
    token = make_token(PROFILER_SECRET, 300)
    url = site_stack.settings.url
    get(url + "/api/episodes/2", {"X-Profile-Token": token})  # at least one stored profile
    for path in [
        f"/_profiler/?_profile={token}",
        f"{episode_paths(site)[1]}?_profile={token}&_profile_view=inline",
    ]:
        status, headers, _ = get(url + path)
        assert status == 200, path
        assert headers.get_all("Referrer-Policy") == ["no-referrer"], path
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"], path
    # Everything else keeps nginx's, once.
    _, headers, _ = get(url + "/api/episodes/2")
    assert headers.get_all("Referrer-Policy") == ["strict-origin-when-cross-origin"]


def test_profiling_tokens_never_reach_nginxs_error_log(make_stack: Callable[..., Stack]) -> None:
    """nginx writes a failed request's line and Referer to its error log as they came: a
    `?_profile=` token with them. A 502 of a profiled request (uWSGI down, restarting, killed)
    is not logged; the page a token in the query opened sends no Referer on."""
    stack = make_stack()
    url = stack.settings.url
    token = make_token(PROFILER_SECRET, 300)
    _, headers, _ = get(url + f"/?_profile={token}")
    assert headers.get_all("Referrer-Policy") == ["no-referrer"]
    stack.call("stopProcessGroup", "uwsgi")
    for path in [f"/api/episodes/1?_profile={token}", f"/?page=2&_profile={token}"]:
        assert get(url + path)[0] == 502, path
    assert get(url + "/api/episodes/2")[0] == 502  # an unprofiled one is still logged
    stack.stop()
    log = (stack.nginx_dir / "error.log").read_text()

    assert "/api/episodes/2" in log
    assert token.partition(".")[2] not in log


def test_a_request_cannot_write_a_line_into_uwsgis_log(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    url = stack.settings.url
    # 4xx from the app, so uWSGI logs each (log-4xx): its path decoded would hold a line break
    # and a terminal escape; nginx refuses them raw.
    get(url + "/api/x%0d%0aFORGED-LINE%1b[31m")
    get(url + "/api/episodes?page=x%0aFORGED-QUERY")
    # Raw, nginx takes bytes from 0x80 (but C1 controls: the next test).
    request = b"GET /api/x\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    assert raw_request(stack.settings.host, stack.settings.port, request)[0] == 404
    stack.stop()
    log = stack.instances[0].log.read_text(errors="surrogateescape")

    assert "GET /api/x%0d%0aFORGED-LINE%1b[31m => generated" in log  # as the client sent it
    assert "GET /api/episodes => generated" in log  # no query string, encoded or not
    assert "\x1b" not in log and "\r" not in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]
    assert "\xc3" not in log and "GET - => generated" in log  # that path is not written at all


@pytest.mark.parametrize(
    ("target", "host", "referer"),
    [
        (b"/api/episodes", b"localhost", b"\x1b[2J\x1b[31mFORGED"),  # ESC in the Referer
        (b"/api/episodes", b"\xc2\x9b31mlocalhost", b"-"),  # U+009B (CSI) in the Host
        (b"/api/ep\xc2\x9b31misodes", b"localhost", b"-"),  # ... in the request line
        (b"/", b"localhost", b"a\x07bell"),  # BEL, for a page too
        (b"/_problem/x", b"localhost", b"\x1b[31m"),  # not a problem page's own path
        (b"/_problem/400", b"localhost", b"\x1b[31m"),  # nor one of them, asked for
    ],
)
def test_a_request_cannot_write_terminal_controls_into_nginxs_error_log(
    make_stack: Callable[..., Stack], target: bytes, host: bytes, referer: bytes
) -> None:
    """nginx's error log holds the request line, Host and Referer as sent (here for the 413 of a
    body over client_max_body_size); such a request is a 400 before that, and nothing is logged."""
    stack = make_stack()
    request = b"POST %s HTTP/1.1\r\nHost: %s\r\nReferer: %s\r\nContent-Length: 100000\r\n" % (
        target,
        host,
        referer,
    )
    status = raw_request(stack.settings.host, stack.settings.port, request + b"\r\n")[0]
    # The same headers without a control character: the 413 that nginx logs.
    plain = b"POST /api/episodes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
    assert raw_request(stack.settings.host, stack.settings.port, plain)[0] == 413
    stack.stop()
    log = stack.nginx_log.read_bytes()

    assert status == 400, log.decode(errors="replace")[-1500:]
    assert b"client intended to send too large body" in log
    assert b"\x1b" not in log and b"\xc2\x9b" not in log and b"\x07" not in log


def test_profiling_tokens_never_reach_the_logs(
    make_stack: Callable[..., Stack], site: Site
) -> None:
    stack = make_stack()
    url = stack.settings.url
    token = make_token(PROFILER_SECRET, 300)
    forged = "1999999999.forged-signature-" + "x" * 20
    referer = {"Referer": f"{url}/?page=1&_profile={token}&x=1&_profile={forged}"}
    get(url + f"/?_profile={token}", referer)  # a profiled page
    get(url + f"/api/episodes?_profile={token}&page=1")  # through the micro-cache's bypass
    get(url + f"/no-such-page?_profile={forged}")  # nginx's frozen 404, after the app said no
    get(url + f"/api/episodes?page=x&_profile={token}")  # a 400: uWSGI's log-4xx line
    # Repeated, the app reads the first; spelled otherwise, a client may still send it.
    get(url + f"/?_profile={token}&_profile=x")
    get(url + f"/?page=1&_profile=x&_profile={token}")
    get(url + f"/?%5Fprofile={token}&_PROFILE%3D{forged}")
    stack.stop()  # flushes nginx's buffered access log
    logs = {
        path.name: path.read_text()
        for path in [stack.nginx_dir / "access.log", *(i.log for i in stack.instances)]
    }
    access = logs["access.log"]
    assert "/no-such-page?_profile=[redacted]" in access
    assert "/?page=1&_profile=[redacted] " in access  # the request line kept up to the token
    assert f"{url}/?page=1&_profile=[redacted]" in access  # the Referer
    assert any("/api/episodes" in text for name, text in logs.items() if name != "access.log")
    for name, text in logs.items():
        assert token not in text and forged not in text, name
        assert token.partition(".")[2] not in text, name  # nor its signature alone


# --- Ranges: one range is a part, many are the whole ----------------------------

#: 300 one-byte ranges: without max_ranges nginx answered each as a part of one multipart
#: answer, its own headers and all, some 30 KB for a 1.3 KB file. (It sends the whole file only
#: when the parts add up to more than the file.)
MANY_RANGES = "bytes=" + ",".join(["0-0"] * 300)


@pytest.mark.parametrize(
    "path, name",
    [
        ("/static/style.css", "static/style.css"),
        ("/episodes/rss", "episodes/rss.xml"),
        ("/", "index.html"),
        ("/artwork.png", "artwork.png"),
    ],
)
def test_more_than_one_range_gets_the_whole_file_once(
    site_stack: Stack, site: Site, path: str, name: str
) -> None:
    url = site_stack.settings.url + path
    whole = frozen(site, name)
    for ranges in [MANY_RANGES, "bytes=0-10,20-30", "bytes=0-10,5-"]:
        status, headers, body = get(url, {"Range": ranges})
        assert (status, len(body)) == (200, len(whole)), ranges[:40]
        assert body == whole and "Content-Range" not in headers, ranges[:40]
        # The app, answering when the build lacks the file, ignores them as well.
        expected = app_get(site, path, {"Range": ranges})
        assert (expected.status_code, expected.data) == (200, whole), ranges[:40]
    # One range, which podcast apps and download managers resume with, is still a part.
    status, headers, body = get(url, {"Range": "bytes=5-14"})
    assert (status, body) == (206, whole[5:15])
    assert headers["Content-Range"] == f"bytes 5-14/{len(whole)}"
    # If-Range: the part while the file is the same, the whole file once it is not.
    _, whole_headers, _ = get(url)
    for validator in [whole_headers["ETag"], whole_headers["Last-Modified"]]:
        status, _, body = get(url, {"Range": "bytes=-10", "If-Range": validator})
        assert (status, body) == (206, whole[-10:]), validator
    status, _, body = get(url, {"Range": "bytes=-10", "If-Range": '"not-the-etag"'})
    assert (status, body) == (200, whole)


def test_the_apps_static_files_take_one_range_and_ignore_many(site: Site) -> None:
    """Werkzeug answered two ranges with a 416 ("none of the ranges can be satisfied"), where
    nginx sends the whole file: RFC 9110 14.2 lets a server ignore Range, not refuse it."""
    whole = frozen(site, "static/style.css")
    response = app_get(site, "/static/style.css", {"Range": "bytes=5-14"})
    assert (response.status_code, response.data) == (206, whole[5:15])
    for ranges in [MANY_RANGES, "bytes=0-10,20-30"]:
        response = app_get(site, "/static/style.css", {"Range": ranges})
        assert (response.status_code, response.data) == (200, whole), ranges[:40]
        assert "Content-Range" not in response.headers


# --- One URL per page: duplicate slashes are redirected ---------------------------


def app_get_raw(site: Site, target: str):
    """The in-process app's answer to ``target`` as a request line would carry it: the test
    client reads a leading "//" as a host."""
    path, _, query = target.partition("?")
    environ = {"PATH_INFO": unquote(path).encode().decode("latin-1"), "QUERY_STRING": query}
    return site.app.test_client().get("/", environ_overrides=environ)


@pytest.mark.parametrize(
    "target, location",
    [
        ("//", "/"),
        ("/episodes//", "/episodes/"),
        ("///x", "/x"),
        ("/api//episodes", "/api/episodes"),
        ("/api//episodes?page=2&per_page=5", "/api/episodes?page=2&per_page=5"),
        ("//static///style.css?v=1", "/static/style.css?v=1"),
        ("/episodes/rss//", "/episodes/rss/"),
        ("//episodes/rss", "/episodes/rss"),
        ("/search//?q=a//b", "/search/?q=a//b"),  # the query string's slashes are its own
        ("/a//b//c///d", "/a/b/c/d"),  # three runs, one redirect
        # Never a Location another host: "//evil.example" is a network-path reference.
        ("//evil.example", "/evil.example"),
        ("///evil.example//", "/evil.example/"),
        ("/search?next=//evil.example", None),
    ],
)
def test_a_path_with_duplicate_slashes_is_redirected_to_its_one_url(
    site_stack: Stack, site: Site, target: str, location: str | None
) -> None:
    """nginx merged the slashes (merge_slashes) and served //, /episodes// … as the pages at
    / and /episodes/ with a 200, where the app redirects: one page at two URLs, cached twice."""
    status, headers, _ = get(site_stack.settings.url + target)
    expected = app_get_raw(site, target)
    if location is None:
        assert status == expected.status_code == 200, target
        return
    assert (status, headers["Location"]) == (308, location), target
    assert (expected.status_code, expected.headers["Location"]) == (308, location), target
    # No lifetime of the page's added to it ($frozen_cache_control): the app sends none either.
    assert headers.get("Cache-Control") == expected.headers.get("Cache-Control") is None, target
    # Readable by other origins where the page it names is (nginx's CORS headers, the app's).
    for name in ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers"):
        assert headers.get(name) == expected.headers.get(name), (target, name)
    # The page it names is the one nginx served at the duplicate URL, by nginx and by the app.
    status, _, body = get(site_stack.settings.url + location)
    assert status == app_get(site, location).status_code, target


def test_more_than_three_runs_of_slashes_take_a_redirect_more(
    site_stack: Stack, site: Site
) -> None:
    """nginx merges three runs a redirect (three maps); the app all of them at once."""
    url = site_stack.settings.url
    status, headers, _ = get(url + "/a//b//c//d//e?x=//")
    assert (status, headers["Location"]) == (308, "/a/b/c/d//e?x=//")
    status, headers, _ = get(url + headers["Location"])
    assert (status, headers["Location"]) == (308, "/a/b/c/d/e?x=//")
    expected = app_get_raw(site, "/a//b//c//d//e?x=//")
    assert (expected.status_code, expected.headers["Location"]) == (308, "/a/b/c/d/e?x=//")


@pytest.mark.parametrize(
    "target, location, app_location",
    [
        # Browsers read "\\" as "/": "/\\evil.example" would send them to evil.example.
        ("//\\evil.example", "/%5Cevil.example", "/%5Cevil.example"),
        ("/\\//evil.example", "/%5C/evil.example", "/%5C/evil.example"),
        # nginx keeps each %-escape as it was sent, in the path and the query string. The app is
        # handed the path decoded (WSGI): "%2F" is a "/" to it, and the rest is escaped anew.
        ("/a%20b//c%C3%A9?q=%2F%2F", "/a%20b/c%C3%A9?q=%2F%2F", "/a%20b/c%C3%A9?q=%2F%2F"),
        ("/a//b%2Fc", "/a/b%2Fc", "/a/b/c"),
    ],
)
def test_a_redirect_for_duplicate_slashes_is_always_a_path_of_this_site(
    site_stack: Stack,
    site: Site,
    tls_context: ssl.SSLContext,
    target: str,
    location: str,
    app_location: str,
) -> None:
    status, headers, _ = get(site_stack.settings.url + target)
    assert (status, headers["Location"]) == (308, location)
    expected = app_get_raw(site, target)
    assert (expected.status_code, expected.headers["Location"]) == (308, app_location)
    # Over HTTPS too, and with an absolute-form request line.
    base = "https://{}:{}".format(*https_address(site_stack))
    status, headers, _ = get(base + target, context=tls_context)
    assert (status, headers["Location"]) == (308, location)
    port = urlsplit(site_stack.settings.url).port
    request = f"GET http://localhost:{port}{target} HTTP/1.1\r\nHost: localhost\r\n"
    status, headers, _ = raw_request(
        "127.0.0.1", port, (request + "Connection: close\r\n\r\n").encode()
    )
    assert (status, headers["Location"]) == (308, location)


def test_a_refused_request_with_duplicate_slashes_is_still_refused(site_stack: Stack) -> None:
    """The server's redirect runs again on the internal redirect to a problem page, for which
    $request_uri is still the client's: the refusal must not become a 308."""
    port = urlsplit(site_stack.settings.url).port
    for status_sent, head in [
        (414, f"GET /api//episodes?q={'x' * 9000} HTTP/1.1\r\nHost: localhost\r\n"),
        (400, f"GET /api//episodes HTTP/1.1\r\nHost: localhost\r\nX-Big: {'x' * 9000}\r\n"),
        (400, "GET /api//episodes HTTP/1.1\r\nHost: localhost\r\nReferer: /\x1b[2J\r\n"),
    ]:
        request = (head + "Connection: close\r\n\r\n").encode()
        status, headers, body = raw_request("127.0.0.1", port, request)
        assert status == status_sent and "Location" not in headers, head[:40]
        assert json.loads(body)["status"] == status_sent, head[:40]
