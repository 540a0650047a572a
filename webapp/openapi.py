"""The API's OpenAPI 3.1 description, served at ``/api/openapi.json``.

    document = openapi_document("https://podcast.example")   # a dict, ready for JSON

Written by hand beside the views it describes (blueprints/api.py), and
checked two ways: ``openapi-spec-validator`` validates the document, and
schemathesis runs property-based requests against the live app on both
databases, checking every answer against it: status codes, content types,
headers and bodies (tests/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

from .models import MAX_EPISODE_NUMBER

#: Bump with every change to what the API answers.
API_VERSION = "1.1.1"
#: What blueprints/api.py accepts: one place, so the description cannot drift from the limits.
#: Far past any real catalogue; a larger page number is malformed, not a miss.
MAX_PAGE = 1_000_000
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _url(description: str, *, nullable: bool = False) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "format": "uri",
        "description": description,
    }


def _problem_response(description: str, **extra_headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": _ref("schemas", "Problem")}},
    }
    if extra_headers:
        response["headers"] = extra_headers
    return response


def _ok(description: str, schema: dict[str, Any], **extra_headers: Any) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "ETag": _ref("headers", "ETag"),
            "Cache-Control": _ref("headers", "CacheControl"),
            **extra_headers,
        },
        "content": {JSON: {"schema": schema}},
    }


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    responses = {"200": ok, "304": _ref("responses", "NotModified")}
    for status in errors:
        responses[status] = _ref("responses", {"400": "BadRequest", "404": "NotFound"}[status])
    responses["503"] = _ref("responses", "Unavailable")
    # Any other error is problem details too, whoever answers: a 405, a 400 for a query string that
    # is not UTF-8, a 412 (If-Match), a 500, and nginx's own (413, 414, 429, 502, 504:
    # deploy/nginx/site.conf.j2).
    responses["default"] = _ref("responses", "Error")
    return responses


EPISODE_PROPERTIES: dict[str, Any] = {
    "number": {"type": "integer", "minimum": 0, "maximum": MAX_EPISODE_NUMBER},
    "title": {"type": "string"},
    "slug": {"type": "string"},
    "url": _url("The episode's page"),
    "published_at": {"type": "string", "format": "date-time"},
    "duration_seconds": {"type": "integer", "minimum": 0},
    "summary": {"type": "string"},
    "guests": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "slug": {"type": "string"}},
            "required": ["name", "slug"],
            "additionalProperties": False,
        },
    },
    "audio": {
        "type": "object",
        "properties": {
            "url": _url("The MP3"),
            "bytes": {"type": "integer", "minimum": 0},
            "type": {"const": "audio/mpeg"},
        },
        "required": ["url", "bytes", "type"],
        "additionalProperties": False,
    },
    "transcript_url": _url("The transcript (HTML), if there is one", nullable=True),
    "chapters_url": _url("The chapters (JSON chapters 1.2), if there are any", nullable=True),
}
DETAIL_PROPERTIES: dict[str, Any] = {
    "show_notes_html": {
        "type": "string",
        "description": (
            "HTML written by the site's editors, cleaned: no script, style, event handler"
            " or javascript: link"
        ),
    },
    "transcript": {"type": "string"},
}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Any]:
    page_link = _url("Another page of the list")
    return {
        "Episode": _object(EPISODE_PROPERTIES),
        "EpisodeDetail": _object(EPISODE_PROPERTIES | DETAIL_PROPERTIES),
        "EpisodeList": _object(
            {
                "episodes": {"type": "array", "items": _ref("schemas", "Episode")},
                "page": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
                "pages": {"type": "integer", "minimum": 1},
                "total": {"type": "integer", "minimum": 0},
                "links": _object(
                    {
                        "self": page_link,
                        "first": page_link,
                        "prev": _url("The previous page, if any", nullable=True),
                        "next": _url("The next page, if any", nullable=True),
                        "last": page_link,
                    }
                ),
            }
        ),
        "Problem": {
            "description": "RFC 9457 problem details",
            "type": "object",
            "properties": {
                "type": {"type": "string", "format": "uri-reference"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
            },
            "required": ["type", "title", "status", "detail"],
        },
    }


def openapi_document(site_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API at ``site_url``/api."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Talk Fast Python API",
            "version": API_VERSION,
            "summary": "The podcast's episodes, read-only, for anyone.",
            "description": (
                "Every answer carries a strong ETag and Cache-Control: revalidate with"
                " If-None-Match to get a 304. Lists link their pages with absolute URLs in"
                " the body and in an RFC 8288 Link header. Errors are RFC 9457 problem"
                " details. Any origin may read the API (CORS)."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": f"{site_url}/api"}],
        "paths": {
            "/episodes": {
                "get": {
                    "operationId": "listEpisodes",
                    "summary": "A page of episodes, newest first",
                    "parameters": [
                        _ref("parameters", "Page"),
                        _ref("parameters", "PerPage"),
                        _ref("parameters", "IfNoneMatch"),
                    ],
                    "responses": _responses(
                        _ok(
                            "The page",
                            _ref("schemas", "EpisodeList"),
                            Link=_ref("headers", "Link"),
                        ),
                        "400",
                        "404",
                    ),
                }
            },
            "/episodes/{number}": {
                "get": {
                    "operationId": "getEpisode",
                    "summary": "One episode, with its show notes and transcript",
                    "parameters": [
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": MAX_EPISODE_NUMBER,
                            },
                            "example": 7,
                        },
                        _ref("parameters", "IfNoneMatch"),
                    ],
                    "responses": _responses(
                        _ok("The episode", _ref("schemas", "EpisodeDetail")), "404"
                    ),
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This document",
                    "parameters": [_ref("parameters", "IfNoneMatch")],
                    "responses": _responses(_ok("OpenAPI 3.1", {"type": "object"})),
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "parameters": {
                "Page": {
                    "name": "page",
                    "in": "query",
                    "description": "Which page; past the last is a 404.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                    "example": 2,
                },
                "PerPage": {
                    "name": "per_page",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_PER_PAGE,
                        "default": DEFAULT_PER_PAGE,
                    },
                    "example": 10,
                },
                "IfNoneMatch": {
                    "name": "If-None-Match",
                    "in": "header",
                    "description": "The ETag of the copy you have: a 304 if it is still current.",
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "ETag": {
                    "description": "A strong validator of this answer",
                    "required": True,
                    "schema": {"type": "string", "pattern": '^(W/)?"[^"]*"$'},
                },
                "CacheControl": {
                    "description": "How long the answer may be reused without asking",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "Link": {
                    "description": "RFC 8288 links to the first, previous, next and last pages",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before trying again",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "responses": {
                "NotModified": {
                    "description": "The copy the client has (If-None-Match) is current",
                    "headers": {"ETag": _ref("headers", "ETag")},
                },
                "BadRequest": _problem_response("A malformed or out-of-range parameter"),
                "NotFound": _problem_response("No such episode, or no such page"),
                "Error": _problem_response("Any other error"),
                "Unavailable": _problem_response(
                    "The database is unreachable; try again after Retry-After",
                    **{"Retry-After": _ref("headers", "RetryAfter")},
                ),
            },
        },
    }
