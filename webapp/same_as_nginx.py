"""What nginx decides about a request before choosing what answers it, decided alike by the
app, which answers alone under ``flask run``, when the build lacks a file, or for a profiled
request (deploy/nginx/):

* a path holding a run of slashes is a 308 to the path with each run made one
  (``$slashes_redirect`` in nginx.conf): one URL per page, and a Location that is always a
  path of this site;
* a Range naming more than one range is ignored (``max_ranges 1``): the whole answer, where
  Werkzeug refused it with a 416.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from flask import Flask, Response, request

_SLASHES = re.compile(r"//+")
#: Two byte ranges or more ("first-last", "first-" or "-suffix" each), as nginx reads them.
_RANGE = r" *(?:[0-9]+-[0-9]*|-[0-9]+) *"
_MANY_RANGES = re.compile(rf"(?i:bytes)={_RANGE}(?:,{_RANGE})+\Z")
#: What a path keeps unescaped in the Location: RFC 3986's pchar and "/", as errors.py logs it,
#: and "%"-escapes made anew (a "\" among them: browsers read "/\" as "//", another host).
_PATH_CHARACTERS = "/:@!$&'()*+,;=-._~"


def redirect_runs_of_slashes() -> Response | None:
    """A ``before_request`` hook: a path with "//" gets a 308 to the path with each run of
    slashes made one, its query string as sent. Werkzeug's own redirect (merge_slashes) came
    only where a route matched the merged path, and named the host the client sent."""
    # PATH_INFO itself: request.path has its leading slashes cut to one.
    path_info: str = request.environ.get("PATH_INFO", "")
    if "//" not in path_info:
        return None
    # WSGI hands the path over as bytes decoded as latin-1 (PEP 3333), %-escapes decoded: each
    # byte is escaped anew, a "\" too (browsers read "/\" as "//", naming a host).
    merged = _SLASHES.sub("/", request.environ.get("SCRIPT_NAME", "") + path_info)
    location = quote(merged.encode("latin-1"), safe=_PATH_CHARACTERS)
    query = request.environ.get("QUERY_STRING", "")
    return Response(status=308, headers={"Location": location + (f"?{query}" if query else "")})


def ignore_more_than_one_range() -> None:
    """A ``before_request`` hook: a Range naming more than one range is dropped, so the answer
    is whole, as nginx's. One range is Werkzeug's to answer, and so is a malformed header (a
    416, as nginx answers "bytes=0-10," too). Werkzeug refused overlapping or unordered ranges
    as malformed: they are only more than one here."""
    ranges = request.environ.get("HTTP_RANGE")
    if ranges is not None and _MANY_RANGES.match(ranges):
        del request.environ["HTTP_RANGE"]


def init_app(app: Flask) -> None:
    app.before_request(redirect_runs_of_slashes)
    app.before_request(ignore_more_than_one_range)
