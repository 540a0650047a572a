"""What nginx decides about a request before choosing what answers it, decided alike by the
app, which answers alone under ``flask run``, when the build lacks a file, or for a profiled
request (deploy/nginx/):

* a path holding a run of slashes is a 308 to the path with each run made one
  (``$slashes_redirect`` in nginx.conf): one URL per page, and a Location that is always a
  path of this site; other origins may read it where they may read the path it names
  (CORS: a script follows a redirect only if it may), as nginx's headers.conf allows;
* a Range naming more than one range is ignored (``max_ranges 1``): the whole answer, where
  Werkzeug refused it with a 416.

A WSGI middleware rather than Flask ``before_request`` hooks: on every request it costs two
lookups in the environ, where two hooks cost a few microseconds (docs/tuning.md).

    app.wsgi_app = SameAsNginx(app.wsgi_app, readable_anywhere=r"/api/")
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from .cors import ANY_ORIGIN_HEADERS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_SLASHES = re.compile(r"//+")
#: Two byte ranges or more ("first-last", "first-" or "-suffix" each), as nginx reads them.
_RANGE = r" *(?:[0-9]+-[0-9]*|-[0-9]+) *"
_MANY_RANGES = re.compile(rf"(?i:bytes)={_RANGE}(?:,{_RANGE})+\Z")
#: What a path keeps unescaped in the Location: RFC 3986's pchar and "/", as errors.py logs it,
#: and "%"-escapes made anew (a "\" among them: browsers read "/\" as "//", another host).
_PATH_CHARACTERS = "/:@!$&'()*+,;=-._~"


class SameAsNginx:
    """Answers a path with "//" as nginx does, and drops a Range of more than one range.

    :param app: the WSGI application to call for every other request.
    :param readable_anywhere: the paths other origins may read (as ``cors.init_app`` takes
        them, matched from the start): the redirect to one of them is readable too. The
        redirect answers before the app, whose ``after_request`` hooks never see it.
    """

    def __init__(
        self, app: WSGIApplication, readable_anywhere: str | re.Pattern[str] | None = None
    ) -> None:
        self.app = app
        self.readable = None if readable_anywhere is None else re.compile(readable_anywhere)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # PATH_INFO itself: Werkzeug's request.path has its leading slashes cut to one.
        if "//" in environ.get("PATH_INFO", ""):
            return _redirect_runs_of_slashes(environ, start_response, self.readable)
        ranges = environ.get("HTTP_RANGE")
        if ranges is not None and "," in ranges and _MANY_RANGES.match(ranges):
            # One range is Werkzeug's to answer, and so is a malformed header (a 416, as nginx
            # answers "bytes=0-10," too). Werkzeug refused overlapping or unordered ranges as
            # malformed: they are only more than one here, and the answer is whole.
            del environ["HTTP_RANGE"]
        return self.app(environ, start_response)


def _redirect_runs_of_slashes(
    environ: WSGIEnvironment, start_response: StartResponse, readable: re.Pattern[str] | None
) -> Iterable[bytes]:
    """A 308 to the path with each run of slashes made one, its query string as sent.
    Werkzeug's own redirect (merge_slashes) came only where a route matched the merged path,
    and named the host the client sent."""
    # WSGI hands the path over as bytes decoded as latin-1 (PEP 3333), %-escapes decoded: each
    # byte is escaped anew, a "\" too (browsers read "/\" as "//", naming a host).
    path = _SLASHES.sub("/", environ["PATH_INFO"])
    merged = _SLASHES.sub("/", environ.get("SCRIPT_NAME", "") + path)
    location = quote(merged.encode("latin-1"), safe=_PATH_CHARACTERS)
    query = environ.get("QUERY_STRING", "")
    headers = [
        ("Location", location + (f"?{query}" if query else "")),
        ("Content-Length", "0"),
    ]
    # The merged path, as nginx matches $uri for its CORS headers and cors.py request.path.
    if readable is not None and readable.match(path):
        headers += ANY_ORIGIN_HEADERS
    start_response("308 Permanent Redirect", headers)
    return []
