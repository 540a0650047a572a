"""Signed, expiring tokens that switch profiling on for one request.

A token is the expiry time (Unix seconds) signed with HMAC-SHA256 by
itsdangerous, salted so it cannot be replayed as any other signed value of the
site. Only the token travels; the secret stays in the server's configuration::

    >>> token = make_token("server secret", ttl_seconds=3600)
    >>> verifier = TokenVerifier("server secret")
    >>> verifier.expires_at(token) is not None
    True
    >>> verifier.expires_at(make_token("another secret", 3600)) is None
    True

A request carries its token in the ``X-Profile-Token`` header, the
``_profile`` query parameter or the ``_profile`` cookie.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

if TYPE_CHECKING:
    from itsdangerous import Signer

#: The query parameter and the cookie that carry a token.
TOKEN_PARAM = "_profile"
#: The ``X-Profile-Token`` request header, as a WSGI environ key.
TOKEN_HEADER_KEY = "HTTP_X_PROFILE_TOKEN"
#: Longer candidates are refused before any parsing or hashing.
MAX_TOKEN_LENGTH = 512

_MARKER = TOKEN_PARAM + "="
_SALT = "request_profiler.token"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _signer(secret: str | bytes) -> Signer:
    # Imported here: a site with profiling switched off never loads itsdangerous.
    from itsdangerous import Signer

    return Signer(secret, salt=_SALT, digest_method=hashlib.sha256)


def make_token(secret: str | bytes, ttl_seconds: float, *, now: float | None = None) -> str:
    """Mint a token valid for ``ttl_seconds`` from ``now`` (default: the current time).

    >>> make_token("s3cret", 60, now=1_700_000_000).startswith("1700000060.")
    True
    """
    if not secret:
        raise ValueError("a secret is required to mint profiling tokens")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = time.time() if now is None else now
    return _signer(secret).sign(str(int(issued + ttl_seconds))).decode("ascii")


def parse_ttl(text: str) -> int:
    """Read a duration such as ``"90s"``, ``"15m"``, ``"1h"`` or ``"2d"`` as seconds.

    >>> parse_ttl("15m"), parse_ttl("1.5h"), parse_ttl("45")
    (900, 5400, 45)
    """
    match = _DURATION.fullmatch(text.lower())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 2d)")
    return int(float(match[1]) * _UNIT_SECONDS[match[2]])


class ValidToken(NamedTuple):
    token: str
    expires_at: float


class TokenVerifier:
    """Checks the tokens minted with the same secret.

    ``clock`` returns the current Unix time; tests pass their own.
    """

    def __init__(self, secret: str | bytes, *, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a secret is required to verify profiling tokens")
        self._signer = _signer(secret)
        self._clock = clock

    def expires_at(self, token: str) -> float | None:
        """The expiry of a valid, unexpired token; None for anything else."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            # itsdangerous compares signatures with hmac.compare_digest.
            expires = int(self._signer.unsign(token))
        except Exception:  # BadSignature, ValueError, a non-ASCII value...
            return None
        return expires if expires > self._clock() else None

    def from_environ(self, environ: dict[str, Any]) -> ValidToken | None:
        """The first valid token of the request: header, then query, then cookie.

        A repeated query parameter or cookie counts by its first value, and a
        repeated header arrives joined by commas, which no signature matches;
        so a request costs at most three signature checks however it is built.
        """
        header = environ.get(TOKEN_HEADER_KEY)
        query = environ.get("QUERY_STRING", "")
        cookie = environ.get("HTTP_COOKIE", "")
        # The common case, no token anywhere, is decided by these substring tests.
        if not header and _MARKER not in query and _MARKER not in cookie:
            return None
        candidates = (
            header,
            _first_value(query, "&", TOKEN_PARAM, unquote),
            _first_value(cookie, ";", TOKEN_PARAM, str.strip),
        )
        for candidate in candidates:
            if candidate:
                expires = self.expires_at(candidate)
                if expires is not None:
                    return ValidToken(candidate, expires)
        return None


def _first_value(text: str, separator: str, name: str, decode: Callable[[str], str]) -> str | None:
    for part in text.split(separator):
        key, _, value = part.strip().partition("=")
        if key == name:
            return decode(value)
    return None
