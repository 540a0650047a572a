"""Signed, expiring tokens that switch profiling on for one request.

A token is the expiry time (Unix seconds) signed with HMAC-SHA256 by
itsdangerous, salted so it cannot be replayed as any other signed value of the
site. Only the token travels; the secret stays in the server's configuration::

    >>> secret = "k3Vq8-server-secret-of-at-least-32-bytes"
    >>> token = make_token(secret, ttl_seconds=3600)
    >>> verifier = TokenVerifier(secret)
    >>> verifier.expires_at(token) is not None
    True
    >>> verifier.expires_at(make_token("another secret, also 32 bytes long", 3600)) is None
    True

A request carries its token in the ``X-Profile-Token`` header, the
``_profile`` query parameter or the ``_profile`` cookie.

Secrets shorter than 32 bytes are refused (a guessable secret mints tokens
for anyone). A token lives at least a second and at most ``max_ttl`` (a day
by default): the verifier refuses a token whose expiry is further away than
that, however it was minted, so a leaked token is useful for a day at most.
"""

from __future__ import annotations

import hashlib
import math
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
#: Shorter secrets are refused: HMAC-SHA256's own key size.
MIN_SECRET_BYTES = 32
#: The shortest lifetime a token may have, in seconds (tokens count whole seconds).
MIN_TTL = 1
#: The longest lifetime a token may have unless configured otherwise: a day.
DEFAULT_MAX_TTL = 86400

_MARKER = TOKEN_PARAM + "="
# What make_token writes: the expiry in decimal, a dot, the HMAC-SHA256 in unpadded URL-safe
# base64. itsdangerous decodes a signature leniently, skipping any other character, so without
# this "<token>\r\n" or "<token><>" would verify too, and that text, not the token, would be
# written into the cookie and be what the redaction removes by value.
_TOKEN_SHAPE = re.compile(r"[0-9]+\.[A-Za-z0-9_-]{43}")
_SALT = "request_profiler.token"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class WeakSecretError(ValueError):
    """The secret is too short to keep tokens from being forged."""


def check_secret(secret: str | bytes) -> None:
    """Raise :class:`WeakSecretError` for a secret shorter than :data:`MIN_SECRET_BYTES`.

    The message never contains the secret.
    """
    size = len(secret.encode() if isinstance(secret, str) else secret)
    if size < MIN_SECRET_BYTES:
        raise WeakSecretError(
            f"the profiling secret is {size} bytes long; it must be at least "
            f"{MIN_SECRET_BYTES}. Make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def _signer(secret: str | bytes) -> Signer:
    check_secret(secret)
    # Imported here: a site with profiling switched off never loads itsdangerous.
    from itsdangerous import Signer

    return Signer(secret, salt=_SALT, digest_method=hashlib.sha256)


def check_ttl(ttl_seconds: float, max_ttl: float = DEFAULT_MAX_TTL) -> None:
    """Raise ValueError unless ``MIN_TTL <= ttl_seconds <= max_ttl``."""
    if not MIN_TTL <= ttl_seconds <= max_ttl:
        raise ValueError(
            f"a token lifetime must be between {MIN_TTL} s and {_seconds(max_ttl)} s, "
            f"not {_seconds(ttl_seconds)} s"
        )


def _seconds(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def make_token(
    secret: str | bytes,
    ttl_seconds: float,
    *,
    now: float | None = None,
    max_ttl: float = DEFAULT_MAX_TTL,
) -> str:
    """Mint a token valid for ``ttl_seconds`` (1 s to ``max_ttl``) from ``now`` (default: now).

    >>> make_token("s3cret-that-is-at-least-32-bytes!", 60, now=1_700_000_000)[:11]
    '1700000060.'
    """
    check_ttl(ttl_seconds, max_ttl)
    issued = time.time() if now is None else now
    return _signer(secret).sign(str(int(issued + ttl_seconds))).decode("ascii")


def parse_ttl(text: str) -> int:
    """Read a duration such as ``"90s"``, ``"15m"``, ``"1h"`` or ``"2d"`` as whole seconds.

    >>> parse_ttl("15m"), parse_ttl("1.5h"), parse_ttl("45")
    (900, 5400, 45)

    Raises ValueError for anything else, and for less than a second. It puts
    no ceiling: compare with the configured one (:func:`check_ttl`).
    """
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 2d)")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not math.isfinite(seconds):  # hundreds of digits
        raise ValueError(f"not a usable duration: {text[:40]!r}...")
    if seconds < MIN_TTL:
        raise ValueError(f"{text.strip()!r} is shorter than the shortest lifetime, {MIN_TTL} s")
    return int(seconds)


class ValidToken(NamedTuple):
    token: str
    expires_at: float


class TokenVerifier:
    """Checks the tokens minted with the same secret.

    :param secret: at least :data:`MIN_SECRET_BYTES` bytes.
    :param max_ttl: seconds; a token that expires further than this from now
        is refused, whoever minted it.
    :param clock: returns the current Unix time; tests pass their own.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = _signer(secret)
        self._max_ttl = max_ttl
        self._clock = clock

    def expires_at(self, token: str) -> float | None:
        """The expiry of a valid, unexpired token; None for anything else."""
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
            return None
        try:
            # itsdangerous compares signatures with hmac.compare_digest.
            expires = int(self._signer.unsign(token))
        except Exception:  # BadSignature, ValueError, a non-ASCII value...
            return None
        now = self._clock()
        return expires if now < expires <= now + self._max_ttl else None

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
