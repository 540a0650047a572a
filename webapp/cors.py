"""CORS for what any website may read: the paths the app names when it calls ``init_app``.

    cors.init_app(app, r"/api/|/feed$")    # matched from the start of the path

The site says which (``READABLE_ANYWHERE`` in webapp/__init__.py: the API, the
feed, transcripts and chapters); this module knows none. All of it is public
and read-only, and no request carries credentials, so every origin is allowed
with ``*``. Because the answer is the same for every origin, a response does
not vary by ``Origin`` and says no ``Vary: Origin`` (that would only split
shared caches). A browser asks first (a preflight ``OPTIONS``) when a script
sends a header outside the CORS-safelisted ones, such as ``If-None-Match``;
``preflight`` answers it. Pages and the profiler
allow no other origin: they send none of these headers (an OPTIONS there gets
its ``Allow`` alone, from ``options``).
"""

from __future__ import annotations

import re
from typing import TypeVar

from flask import Flask, Response, current_app, request
from werkzeug.wrappers import Response as BaseResponse

R = TypeVar("R", bound=BaseResponse)

#: Response headers a script on another origin may read, beyond the safelisted ones
#: (Cache-Control, Content-Type, Last-Modified …): validators, pagination, back-off.
EXPOSED_HEADERS = "ETag, Link, Retry-After"
#: Request headers a script may send: the conditional ones, to revalidate.
ALLOWED_HEADERS = "If-None-Match, If-Modified-Since"
ALLOWED_METHODS = "GET, HEAD, OPTIONS"
#: How long a browser may reuse a preflight's answer (Chromium caps it at two hours).
PREFLIGHT_MAX_AGE = 7200


#: The headers that make an answer readable by scripts on any origin.
ANY_ORIGIN_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
)


def allow_any_origin(response: R) -> R:
    """``response``, readable by scripts on any origin."""
    for name, value in ANY_ORIGIN_HEADERS:
        response.headers[name] = value
    return response


def options(allow: str = ALLOWED_METHODS) -> Response:
    """The answer to a plain OPTIONS: ``allow``, the methods the route takes, and no content."""
    response = Response(status=204)
    # No content, so no Content-Type (Werkzeug's default would claim text/html).
    del response.headers["Content-Type"]
    response.headers["Allow"] = allow
    return response


def preflight(allow: str = ALLOWED_METHODS) -> Response:
    """The answer to a CORS preflight: the methods and headers a script may use, and how long;
    ``allow``, the methods the route itself takes (its ``Allow``)."""
    response = allow_any_origin(options(allow))
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return response


def init_app(app: Flask, readable_anywhere: str | re.Pattern[str]) -> None:
    """Let any origin read the answers (errors included) on paths ``readable_anywhere``
    matches from their start, and answer preflights for those of them that are routes."""
    app.extensions["cors_readable"] = re.compile(readable_anywhere)
    app.before_request(_answer_preflight)
    app.after_request(_allow_other_origins)


def _readable(path: str) -> bool:
    return current_app.extensions["cors_readable"].match(path) is not None


def _answer_preflight() -> Response | None:
    """A ``before_request`` hook: a preflight for a route that exists gets its answer, and so does
    a plain OPTIONS there (its Allow), rather than Flask's empty 200 labelled text/html; on any
    other route, an OPTIONS gets its Allow without CORS."""
    rule = request.url_rule
    if request.method != "OPTIONS" or rule is None:
        return None
    allow = ", ".join(sorted(rule.methods or ALLOWED_METHODS.split(", ")))
    return preflight(allow) if _readable(request.path) else options(allow)


def _allow_other_origins(response: Response) -> Response:
    """An ``after_request`` hook: every answer on those paths, errors included, is readable."""
    if _readable(request.path):
        allow_any_origin(response)
    return response
