"""Every failure gets a clear answer: HTML for people, problem details for programs.

The API (and ``/health``) answer errors as RFC 9457 problem details,
``application/problem+json``::

    {"type": "about:blank", "title": "Not Found", "status": 404,
     "detail": "There is no episode 31."}

``about:blank`` says the status code is the whole story; ``title`` is its
phrase (RFC 9110's), ``detail`` what went wrong with this request. nginx
answers its own errors on ``/api/`` in the same form (deploy/nginx).

No stack trace ever reaches a client. 4xx answers carry the reason;
a database outage is a 503 with Retry-After; anything unexpected is a 500
logged here with its traceback.
"""

from __future__ import annotations

import sys
from urllib.parse import quote

from flask import Flask, Response, current_app, got_request_exception, render_template, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable
from werkzeug.http import HTTP_STATUS_CODES

from .db.backends import DatabaseUnavailable
from .params import reject_undecodable_query_string

#: Seconds a client should wait before retrying during a database outage.
RETRY_AFTER_SECONDS = 5
PROBLEM_CONTENT_TYPE = "application/problem+json"
#: RFC 9110's phrases where they are newer than Werkzeug's.
STATUS_PHRASES = HTTP_STATUS_CODES | {413: "Content Too Large", 414: "URI Too Long"}
#: What a path may hold unencoded (RFC 3986's pchar and "/"): the rest is %-encoded in logs.
_URL_PATH_CHARACTERS = "/:@!$&'()*+,;=-._~"


def problem(status: int, detail: str) -> Response:
    """An RFC 9457 problem details answer: the status code says what kind, ``detail`` what."""
    body = {
        "type": "about:blank",
        "title": STATUS_PHRASES[status],
        "status": status,
        "detail": detail,
    }
    return current_app.response_class(
        current_app.json.dumps(body), status=status, mimetype=PROBLEM_CONTENT_TYPE
    )


def wants_problem_details() -> bool:
    """Programs read these paths: their errors are problem details, not pages."""
    return request.path.startswith("/api/") or request.path == "/health"


def error_response(error: HTTPException) -> Response:
    code = error.code or 500
    if wants_problem_details():
        response = problem(code, error.description or STATUS_PHRASES[code])
    elif request_ctx.url_adapter is None:
        # Werkzeug could not bind the URL map: a Host it cannot IDNA-encode (a label over
        # 63 bytes, which nginx passes on) is a BadHost 400. The page's url_for calls would
        # fail on it and turn the 400 into an unhandled exception: the reason as text instead.
        response = Response(
            f"{STATUS_PHRASES[code]}\n{error.description or ''}\n", mimetype="text/plain"
        )
    else:
        response = Response(
            render_template("error.html", code=code, name=error.name, message=error.description),
            mimetype="text/html",
        )
    response.status_code = code
    # Keeps the Allow header of a 405, the Location of a 301 …
    for name, value in error.get_headers():
        if name.lower() not in {"content-type", "content-length"}:
            response.headers[name] = value
    return response


def database_unavailable(error: DatabaseUnavailable) -> Response:
    current_app.logger.warning("503: %s", error)
    response = error_response(
        ServiceUnavailable("The database is unavailable right now. Please try again shortly.")
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def internal_error(error: Exception) -> Response:
    # Flask sends this signal only when no handler is registered for Exception: sent here as
    # Flask would, for what listens to it (the profiler names the error in the 500's profile).
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    got_request_exception.send(app, _async_wrapper=app.ensure_sync, exception=error)
    # Flask's log_exception, with the path percent-encoded again: decoded, a %0a in it would
    # end the log line and start one the client wrote.
    path = quote(request.path, safe=_URL_PATH_CHARACTERS)
    current_app.logger.error("Exception on %s [%s]", path, request.method, exc_info=sys.exc_info())
    return error_response(
        InternalServerError("Something went wrong on our side. It has been logged.")
    )


def init_app(app: Flask) -> None:
    app.before_request(reject_undecodable_query_string)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(DatabaseUnavailable, database_unavailable)
    app.register_error_handler(Exception, internal_error)
