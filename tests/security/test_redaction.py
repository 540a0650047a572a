"""No token reaches a stored profile or a page, whatever header, parameter or message carried it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from request_profiler import DirectoryStore, ProfilerMiddleware, make_token

from tests.profiler.helpers import OTHER_SECRET, SECRET, run

from .conftest import Served, echoing_app, profile_request

#: A second token, valid for another site: a _profile= value, never the accepted one.
OTHER = make_token(OTHER_SECRET, 600)


def everything_kept(served: Served) -> list[bytes]:
    """Every stored file and its name, and every viewer page and download of every profile."""
    kept = [path.read_bytes() for path in served.store_dir.iterdir()]
    kept += [path.name.encode() for path in served.store_dir.iterdir()]
    urls = ["/_profiler/", "/_profiler/?sort=duration", "/_profiler/endpoints"]
    for meta in DirectoryStore(served.store_dir).recent():
        profile_id = meta["id"]
        urls += [
            f"/_profiler/{profile_id}",
            f"/_profiler/{profile_id}/profile.html",
            f"/_profiler/{profile_id}/download/speedscope",
            f"/_profiler/{profile_id}/download/session",
        ]
    viewer = {"X-Profile-Token": served.token}
    answers = {url: run(served.middleware, url, headers=viewer) for url in urls}
    # Each page shown, or a secret in it would go unseen.
    assert {
        url: answer.status for url, answer in answers.items() if answer.status != "200 OK"
    } == {}
    return kept + [answer.body for answer in answers.values()]


def assert_nowhere(served: Served, *secrets: str) -> None:
    kept = everything_kept(served)
    for secret in secrets:
        assert not [blob for blob in kept if secret.encode() in blob], secret


@pytest.mark.parametrize("accepted_from", ["header", "query", "cookie"])
def test_the_accepted_token_is_removed_from_every_field_that_carried_it(
    served: Served, accepted_from: str
) -> None:
    token = served.token
    headers = {
        "Referer": f"https://podcast.test/episodes/?_profile={token}",
        "X-Original-URL": f"/episodes/?page=2&_profile={token}",
        "Origin": f"https://{token}.podcast.test",
        "X-Debug": f"token {token}; next=/x?_profile={OTHER}",
        f"X-{token.replace('.', '-')}": "a header named after it",
        "X-Endpoint": f"pages.{token}",
        "X-Sql": token,
        "X-Error": f"no such thing: {token}",
    }
    query = f"page=2&_profile={OTHER}"
    if accepted_from == "header":
        headers["X-Profile-Token"] = token
    elif accepted_from == "query":
        query = f"_profile={token}&page=2&_profile={OTHER}"  # the first one counts
    else:
        headers["Cookie"] = f"theme=dark; _profile={token}"

    meta = profile_request(
        served,
        f"/episodes/{token}",
        carry_token=False,
        headers=headers,
        environ_overrides={"QUERY_STRING": query},
    )

    assert meta["trigger"] == "token"
    assert_nowhere(served, token, OTHER, token.partition(".")[2])
    assert meta["headers"]["Referer"] == "https://podcast.test/episodes/?_profile=[redacted]"
    assert meta["path"] == "/episodes/[redacted]"
    assert meta["error"] == "LookupError: no such thing: [redacted]"
    assert meta["query"].count("_profile=[redacted]") == query.count("_profile=")


SPELLINGS = ["_profile={}", "%5Fprofile={}", "_profile%3D{}", "%5fPROFILE%3d{}", "x=1;_profile={}"]


@pytest.fixture
def sampled(tmp_path) -> Served:
    """Every request profiled, none with a token: the profiles of 1% sampling."""
    store_dir = tmp_path / "sampled"
    middleware = ProfilerMiddleware(
        echoing_app, secret=SECRET, sample_rate=1.0, directory=store_dir
    )
    return Served(middleware, make_token(SECRET, 600), store_dir)


def test_profile_values_are_redacted_in_sampled_requests_too(sampled: Served) -> None:
    # No valid token: nothing to redact by value, but every _profile= value goes.
    forged = "1999999999.forged-signature"

    meta = profile_request(
        sampled,
        carry_token=False,
        query_string=f"_profile={forged}&_profile={OTHER}",
        headers={"Referer": f"https://x.test/?a=1&_profile={OTHER}", "X-Profile-Token": forged},
    )

    assert meta["trigger"] == "sample"
    assert_nowhere(sampled, forged, OTHER)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_profile_values_are_redacted_however_spelled(served: Served, spelling: str) -> None:
    profile_request(served, headers={"Referer": "https://x.test/?" + spelling.format(OTHER)})

    assert_nowhere(served, OTHER)


@pytest.mark.parametrize("field", ["Referer", "X-Sql", "X-Error", "X-Endpoint"])
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_sampled_profiles_lose_profile_values_however_spelled(
    sampled: Served, spelling: str, field: str
) -> None:
    # A sampled profile is stored as it is unless some string in it may hold a _profile=
    # value: each spelling, in each part of the profile, must be found.
    text = "https://x.test/?" + spelling.format(OTHER)

    meta = profile_request(sampled, carry_token=False, headers={field: text})

    assert meta["trigger"] == "sample"
    assert_nowhere(sampled, OTHER)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    field=st.sampled_from(["path", "query", "header", "sql", "error", "endpoint"]),
)
def test_the_token_is_removed_wherever_it_sits_in_any_text(
    served: Served, before: str, after: str, field: str
) -> None:
    text = before + served.token + after
    as_wsgi = text.encode("utf-8").decode("latin-1")  # PEP 3333: bytes as latin-1
    overrides = {
        "path": {"PATH_INFO": "/" + as_wsgi},
        "query": {"QUERY_STRING": as_wsgi},
        "header": {"HTTP_X_ANYTHING": text},
        "sql": {"HTTP_X_SQL": text},
        "error": {"HTTP_X_ERROR": text},
        "endpoint": {"HTTP_X_ENDPOINT": text},
    }[field]

    profile_request(served, environ_overrides=overrides)

    kept = b"".join(path.read_bytes() for path in served.store_dir.glob("*.profile"))
    assert served.token.encode() not in kept


def test_a_token_cut_off_by_a_length_limit_is_removed_too(served: Served) -> None:
    # SQL statements are kept to 2,000 characters and errors to 500: the token straddles both.
    headers = {
        "X-Sql": "x" * (2000 - 60) + served.token,
        "X-Error": "y" * (500 - 30) + served.token,
    }

    meta = profile_request(served, headers=headers)

    assert meta["sql"][0][0].endswith("x[redacted]")
    assert meta["error"].endswith("y[redacted]")
    signature = served.token.partition(".")[2]
    assert_nowhere(served, served.token, signature[:10])
