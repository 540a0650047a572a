"""Whether a request was sent by a page of the site itself, as browsers tell it.

The viewer changes state (sets the profiling cookie) only on such requests: a
page on another site could otherwise post a form that plants its own token in
a visitor's browser, and then read that visitor's requests in the viewer.

Browsers say where a request comes from in ``Sec-Fetch-Site`` (Fetch
Metadata, sent by every current browser), and older ones in ``Origin`` on
every POST; a page can set neither. ``Sec-Fetch-Site`` decides when present,
else ``Origin`` must be the request's own origin. A request with neither is
refused: no browser page we can vouch for sent it.

    >>> is_same_origin({"HTTP_SEC_FETCH_SITE": "same-origin"})
    True
    >>> is_same_origin({"HTTP_SEC_FETCH_SITE": "cross-site", "HTTP_ORIGIN": "https://evil.test"})
    False
    >>> is_same_origin({"wsgi.url_scheme": "https", "HTTP_HOST": "podcast.test",
    ...                 "HTTP_ORIGIN": "https://podcast.test"})
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def is_same_origin(environ: Mapping[str, Any]) -> bool:
    """True if the browser says the request comes from this origin, False otherwise."""
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None:
        # The browser compared the origins itself, whatever proxies did to
        # Host and scheme. "same-site" is not enough: a sibling subdomain is
        # another party.
        return fetch_site == "same-origin"
    origin = environ.get("HTTP_ORIGIN")
    return origin is not None and origin.lower() == own_origin(environ)


def own_origin(environ: Mapping[str, Any]) -> str:
    """``scheme://host[:port]`` of the request as the browser addressed it.

    The port comes from ``Host`` or, when a proxy dropped it there (nginx's
    ``$host``), from ``SERVER_PORT``; a default port is left out, as in
    ``Origin``.
    """
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    if ":" not in host.rpartition("]")[2]:  # no port (an IPv6 literal has colons inside [])
        port = str(environ.get("SERVER_PORT", ""))
        if port and port != _DEFAULT_PORTS.get(scheme):
            host = f"{host}:{port}"
    elif host.endswith(":" + _DEFAULT_PORTS.get(scheme, "")):
        host = host.rpartition(":")[0]
    return f"{scheme}://{host}".lower()
