"""Minting and checking the signed, expiring profiling tokens."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from request_profiler import ProfilerMiddleware, TokenVerifier, make_token, parse_ttl
from request_profiler.tokens import MAX_TOKEN_LENGTH

from .helpers import SECRET, environ_for, hello_app

NOW = 1_700_000_000.0


def verifier_at(now: float) -> TokenVerifier:
    return TokenVerifier(SECRET, clock=lambda: now)


def test_a_token_is_valid_until_its_expiry() -> None:
    token = make_token(SECRET, 600, now=NOW)

    assert verifier_at(NOW).expires_at(token) == NOW + 600
    assert verifier_at(NOW + 599).expires_at(token) == NOW + 600
    assert verifier_at(NOW + 600).expires_at(token) is None


def test_the_secret_does_not_travel_in_the_token() -> None:
    assert SECRET not in make_token(SECRET, 600)


def test_another_secret_or_an_edit_invalidates_a_token() -> None:
    token = make_token(SECRET, 600, now=NOW)
    expiry, signature = token.split(".")

    assert verifier_at(NOW).expires_at(make_token("other", 600, now=NOW)) is None
    assert verifier_at(NOW).expires_at(f"{int(expiry) + 3600}.{signature}") is None
    assert verifier_at(NOW).expires_at(f"{expiry}.{signature[:-1]}A") is None


def test_length_is_capped_before_the_signature_is_checked() -> None:
    # Both are correctly signed and far from expiry; only the length differs.
    short_enough = make_token(SECRET, 10 ** (MAX_TOKEN_LENGTH - 80), now=0)
    too_long = make_token(SECRET, 10**MAX_TOKEN_LENGTH, now=0)
    assert len(short_enough) <= MAX_TOKEN_LENGTH < len(too_long)

    assert verifier_at(NOW).expires_at(short_enough) is not None
    assert verifier_at(NOW).expires_at(too_long) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_TOKEN_LENGTH + 50))
def test_arbitrary_text_is_never_accepted_and_never_raises(text: str) -> None:
    assert verifier_at(NOW).expires_at(text) is None


def test_the_header_wins_then_the_query_then_the_cookie() -> None:
    header = make_token(SECRET, 100, now=NOW)
    query = make_token(SECRET, 200, now=NOW)
    cookie = make_token(SECRET, 300, now=NOW)
    verifier = verifier_at(NOW)

    def found(header_token: str, query_token: str, cookie_token: str) -> str | None:
        headers = {
            "X-Profile-Token": header_token,
            "Cookie": f"theme=dark; _profile={cookie_token}",
        }
        valid = verifier.from_environ(
            environ_for("/", headers=headers, query_string={"_profile": query_token})
        )
        return valid and valid.token

    assert found(header, query, cookie) == header
    assert found("bad", query, cookie) == query
    assert found("bad", "bad", cookie) == cookie
    assert found("bad", "bad", "bad") is None
    assert verifier.from_environ(environ_for("/", query_string={"_profile_view": "inline"})) is None


def test_make_token_refuses_what_would_make_a_useless_token() -> None:
    with pytest.raises(ValueError):
        make_token("", 60)
    with pytest.raises(ValueError):
        make_token(SECRET, 0)
    with pytest.raises(ValueError):
        TokenVerifier("")


def test_the_middleware_mints_tokens_with_its_own_secret_and_ttl(tmp_path) -> None:
    middleware = ProfilerMiddleware(hello_app, secret=SECRET, directory=tmp_path, token_ttl=90)

    verifier = TokenVerifier(SECRET)
    assert verifier.expires_at(middleware.make_token()) == pytest.approx(time.time() + 90, abs=2)
    assert verifier.expires_at(middleware.make_token(3600)) == pytest.approx(
        time.time() + 3600, abs=2
    )
    with pytest.raises(ValueError, match="no secret"):
        ProfilerMiddleware(hello_app).make_token()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("2d", 172800),
        ("1.5h", 5400),
        ("45", 45),
        (" 2H ", 7200),
    ],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "0s", "-5m", "1w", "1h30m", "ten"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)
