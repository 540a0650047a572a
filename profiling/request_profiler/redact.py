"""What of a request may be written down with its profile.

Profiles outlive requests and are read by whoever holds a viewer token, so
credentials are replaced by ``[redacted]`` before anything is stored: by name
(the ``Cookie`` and ``Authorization`` headers, secret query parameters), and
by value wherever they travelled (:class:`Redactor`).
"""

from __future__ import annotations

import re
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


# "_profile=" and its percent-encoded spellings, then its value up to whatever
# ends a value in a query string, a cookie, a header list or a quoted string.
# Over-redacting ("my_profile=x") is harmless; missing a spelling is not.
_TOKEN_VALUE = re.compile(r"((?:_|%5f)profile(?:=|%3d))[^&;,\s\"'#<>]*", re.IGNORECASE)


#: A field that ends with this much of the token, or more, has had the token cut off.
_TOKEN_HEAD = 8


def _may_name_the_parameter(value: Any) -> bool:
    """Whether a string in ``value`` (strings, numbers, None, and dicts, lists and tuples of
    them) may hold a ``_profile=`` value for :meth:`Redactor.text` to remove.

    None can if none holds "profile=" or "profile%3d" in any case, and ``repr`` writes those
    characters as they are: one pass in C, where scrubbing calls :meth:`Redactor.text` on
    every string.
    """
    text = repr(value).lower()
    return "profile=" in text or "profile%3d" in text


class Redactor:
    """Removes one request's credentials from anything about to be stored.

    The token the middleware accepted is removed wherever it appears (a
    ``Referer``, an ``X-Original-URL``, the path, an error message, a SQL
    statement), and so is every ``_profile=`` value, valid or not, whichever
    header or parameter carried it.

    >>> Redactor("1700000000.sig").text("GET /a?next=/b?_profile=other%26x /1700000000.sig")
    'GET /a?next=/b?_profile=[redacted] /[redacted]'
    """

    def __init__(self, token: str | None = None) -> None:
        self._token = token or None

    def text(self, value: str) -> str:
        token = self._token
        if token is not None:
            if token in value:
                value = value.replace(token, REDACTED)
            # A field cut to its length limit (SQL, an error) may end with the start of the token.
            start = value.rfind(token[:_TOKEN_HEAD], max(0, len(value) - len(token)))
            if start != -1 and token.startswith(value[start:]):
                value = value[:start] + REDACTED
        # The regex is slow on long text, and a SQL statement rarely says "profile".
        if "profile" not in value.lower():
            return value
        return _TOKEN_VALUE.sub(rf"\1{REDACTED}", value)

    def scrub(self, value: Any) -> Any:
        """``value`` with :meth:`text` applied to every string in it, keys included."""
        if self._token is None and not _may_name_the_parameter(value):
            return value  # the profile of a sampled request, as nearly all are
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self._scrub(key): self._scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item) for item in value]
        return value

    def data(self, data: bytes) -> bytes:
        """The engine's bytes with the token masked by as many ``*``: binary formats stay valid."""
        if self._token is None:
            return data
        token = self._token.encode()
        return data.replace(token, b"*" * len(token)) if token in data else data
