"""Minting and checking the signed, expiring profiling tokens."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from request_profiler import (
    ProfilerMiddleware,
    TokenVerifier,
    WeakSecretError,
    make_token,
    parse_ttl,
)
from request_profiler.tokens import DEFAULT_MAX_TTL, MAX_TOKEN_LENGTH

from .helpers import OTHER_SECRET, SECRET, environ_for, hello_app, run

NOW = 1_700_000_000.0


def verifier_at(now: float, max_ttl: float = DEFAULT_MAX_TTL) -> TokenVerifier:
    return TokenVerifier(SECRET, max_ttl=max_ttl, clock=lambda: now)


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

    assert verifier_at(NOW).expires_at(make_token(OTHER_SECRET, 600, now=NOW)) is None
    assert verifier_at(NOW).expires_at(f"{int(expiry) + 3600}.{signature}") is None
    assert verifier_at(NOW).expires_at(f"{expiry}.{signature[:-1]}A") is None


def test_length_is_capped_before_the_signature_is_checked() -> None:
    # Both are correctly signed and far from expiry; only the length differs.
    short_enough = make_token(SECRET, 10 ** (MAX_TOKEN_LENGTH - 80), now=0, max_ttl=math.inf)
    too_long = make_token(SECRET, 10**MAX_TOKEN_LENGTH, now=0, max_ttl=math.inf)
    assert len(short_enough) <= MAX_TOKEN_LENGTH < len(too_long)

    assert verifier_at(NOW, max_ttl=math.inf).expires_at(short_enough) is not None
    assert verifier_at(NOW, max_ttl=math.inf).expires_at(too_long) is None


@pytest.mark.parametrize("extra", ["\r\n", "<>", ' ;,"', "\x00\x00", "\u00e9", "\u2028", "%%"])
@pytest.mark.parametrize("where", ["end", "inside"])
def test_a_signature_with_characters_besides_its_own_is_refused(extra: str, where: str) -> None:
    """itsdangerous base64-decodes a signature leniently, skipping any character that is not
    URL-safe base64: these would verify, and the text sent, not the token minted, would go on
    to the Set-Cookie header and to the redaction of the token by value."""
    token = make_token(SECRET, 600, now=NOW)
    tampered = token + extra if where == "end" else token[:-4] + extra + token[-4:]

    assert verifier_at(NOW).expires_at(token) == NOW + 600
    assert verifier_at(NOW).expires_at(tampered) is None


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


@pytest.mark.parametrize("secret", ["", "a", "x" * 31, "é" * 15, b"\x00" * 31])
def test_secrets_shorter_than_32_bytes_are_refused_everywhere(tmp_path, secret) -> None:
    for attempt in (
        lambda: make_token(secret, 60),
        lambda: TokenVerifier(secret),
        lambda: ProfilerMiddleware(hello_app, secret=secret or b"\x00", directory=tmp_path),
    ):
        with pytest.raises(WeakSecretError, match="at least 32") as error:
            attempt()
        assert "secrets.token_urlsafe(32)" in str(error.value)  # how to make one


def test_32_bytes_are_enough_counted_in_bytes_not_characters() -> None:
    assert TokenVerifier("é" * 16).expires_at(make_token("é" * 16, 60)) is not None


@pytest.mark.parametrize("ttl", [0, 0.5, -1, DEFAULT_MAX_TTL + 1, 10**30, math.inf, math.nan])
def test_make_token_refuses_lifetimes_outside_one_second_to_the_ceiling(ttl) -> None:
    with pytest.raises(ValueError, match="between 1 s and 86400 s"):
        make_token(SECRET, ttl)


def test_the_ceiling_is_configurable() -> None:
    assert make_token(SECRET, 7 * 86400, max_ttl=7 * 86400)
    with pytest.raises(ValueError):
        make_token(SECRET, 601, max_ttl=600)


def test_the_verifier_refuses_a_token_that_outlives_its_ceiling_however_minted() -> None:
    week = make_token(SECRET, 7 * 86400, now=NOW, max_ttl=math.inf)

    assert verifier_at(NOW).expires_at(week) is None
    assert verifier_at(NOW, max_ttl=7 * 86400).expires_at(week) == NOW + 7 * 86400
    # Once it is within a day of its expiry it is as good as a day's token: the
    # ceiling bounds what a leaked token is worth, from any moment on.
    assert verifier_at(NOW + 6 * 86400).expires_at(week) == NOW + 7 * 86400


def test_the_middleware_mints_tokens_with_its_own_secret_and_ttl(tmp_path) -> None:
    middleware = ProfilerMiddleware(hello_app, secret=SECRET, directory=tmp_path, token_ttl=90)

    verifier = TokenVerifier(SECRET)
    assert verifier.expires_at(middleware.make_token()) == pytest.approx(time.time() + 90, abs=2)
    assert verifier.expires_at(middleware.make_token(3600)) == pytest.approx(
        time.time() + 3600, abs=2
    )
    with pytest.raises(ValueError, match="no secret"):
        ProfilerMiddleware(hello_app).make_token()
    with pytest.raises(ValueError, match="between 1 s and 86400 s"):
        middleware.make_token(2 * 86400)


def test_the_middleware_applies_its_ceiling_to_minting_and_checking(tmp_path) -> None:
    short = ProfilerMiddleware(hello_app, secret=SECRET, directory=tmp_path, max_token_ttl=600)
    day_token = make_token(SECRET, 86400)

    assert short.token_ttl == 600  # an hour would pass the ceiling
    with pytest.raises(ValueError):
        short.make_token(601)
    assert run(short, headers={"X-Profile-Token": day_token}).header("X-Profile-Id") is None
    assert run(short, headers={"X-Profile-Token": short.make_token()}).header("X-Profile-Id")
    with pytest.raises(ValueError):
        ProfilerMiddleware(hello_app, secret=SECRET, directory=tmp_path, token_ttl=0.5)


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


@pytest.mark.parametrize(
    "text", ["", "h", "0s", "0.5s", "0.99", "-5m", "1w", "1h30m", "ten", "9" * 400 + "d"]
)
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_parse_ttl_leaves_the_ceiling_to_the_caller() -> None:
    assert parse_ttl("99999999999999999999d") > 10**24
