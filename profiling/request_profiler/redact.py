"""What of a request may be written down with its profile.

Profiles outlive requests and are read by whoever holds a viewer token, so
credentials are replaced by ``[redacted]`` before anything is stored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import unquote_plus

from .tokens import TOKEN_HEADER_KEY, TOKEN_PARAM

REDACTED = "[redacted]"

#: Query parameters redacted by default, besides the token's own ``_profile``.
DEFAULT_SECRET_PARAMS = ("password", "token", "access_token", "api_key", "secret")

_SECRET_HEADER_KEYS = frozenset(
    {TOKEN_HEADER_KEY, "HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"}
)


def redact_query(query: str, secret_params: Collection[str] = DEFAULT_SECRET_PARAMS) -> str:
    """Replace the values of ``_profile`` and ``secret_params`` (lower case) in a query string.

    >>> redact_query("page=2&_profile=abc.def&password=hunter2")
    'page=2&_profile=[redacted]&password=[redacted]'
    """
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        # Compare decoded names: "%5Fprofile" is "_profile" to the application.
        decoded = unquote_plus(name).lower()
        if equals and (decoded == TOKEN_PARAM or decoded in secret_params):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return "&".join(parts)


def request_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers by their usual names, credentials redacted.

    >>> request_headers({"HTTP_USER_AGENT": "curl", "HTTP_COOKIE": "sid=1"})
    {'User-Agent': 'curl', 'Cookie': '[redacted]'}
    """
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
            headers[name] = REDACTED if key in _SECRET_HEADER_KEYS else value
    return headers
