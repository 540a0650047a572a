"""Python 3.12+: cProfile runs on ``sys.monitoring``, and only one profiler may hold its slot.

Since 3.12, ``cProfile.Profile().enable()`` raises "Another profiling tool is already
active" while another cProfile (a ``python -m cProfile`` around the server, an APM agent,
a developer's own ``Profile().enable()``) or any tool registered as
``sys.monitoring.PROFILER_ID`` is running. On 3.11 it silently replaced the other
profiler's hook instead. These tests hold the slot with the real thing, not a stand-in,
and check what the middleware does then: the request is served, unprofiled, the reason is
logged once, and profiling resumes when the slot is free.
"""

from __future__ import annotations

import cProfile
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import hello_app, run, stored

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="cProfile uses sys.monitoring from Python 3.12"
)

REFUSAL = "Another profiling tool is already active"
FAILED_TO_START = (
    "request_profiler: starting the profiler failed; requests are still served. "
    "Further failures are not logged until it succeeds again."
)


def _another_cprofile() -> Iterator[None]:
    other = cProfile.Profile()
    other.enable()
    try:
        yield
    finally:
        other.disable()


def _another_monitoring_tool() -> Iterator[None]:
    monitoring = sys.monitoring
    monitoring.use_tool_id(monitoring.PROFILER_ID, "an APM agent")
    try:
        yield
    finally:
        monitoring.free_tool_id(monitoring.PROFILER_ID)


@pytest.fixture(params=[_another_cprofile, _another_monitoring_tool], ids=["cprofile", "tool"])
def profiler_slot_taken(request: pytest.FixtureRequest) -> Iterator[None]:
    """The process's profiler slot held by someone else while the test runs."""
    yield from request.param()


def test_cprofile_serves_the_request_unprofiled_and_says_why(
    profiler_slot_taken, make_middleware, store_dir: Path, token: str, caplog
) -> None:
    middleware = make_middleware(profiler="cprofile")
    headers = {"X-Profile-Token": token}

    results = [run(middleware, "/episodes", headers=headers) for _ in range(3)]

    # The response is the app's own, byte for byte: no profile headers, never a 500.
    assert results == [run(hello_app, "/episodes", headers=headers)] * 3
    assert results[0].status == "200 OK" and results[0].header("X-Profile-Id") is None
    assert not store_dir.exists()
    # Logged once for the run of failures, with the interpreter's own reason.
    failures = [r for r in caplog.records if r.getMessage() == FAILED_TO_START]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and str(failures[0].exc_info[1]) == REFUSAL


def test_the_inline_view_falls_back_to_the_page_itself(
    profiler_slot_taken, make_middleware, store_dir: Path, token: str
) -> None:
    middleware = make_middleware(profiler="cprofile")

    result = run(middleware, "/", query_string={"_profile": token, "_profile_view": "inline"})

    assert (result.status, result.body) == ("200 OK", b"hello /")
    assert not store_dir.exists()


def test_profiling_resumes_once_the_other_profiler_stops(
    make_middleware, store_dir: Path, token: str, caplog
) -> None:
    middleware = make_middleware(profiler="cprofile")
    headers = {"X-Profile-Token": token}
    for _ in _another_cprofile():
        assert run(middleware, "/", headers=headers).header("X-Profile-Id") is None

    result = run(middleware, "/", headers=headers)

    assert result.body == b"hello /"
    assert [meta["id"] for meta in stored(store_dir)] == [result.header("X-Profile-Id")]
    assert [r.getMessage() for r in caplog.records].count(FAILED_TO_START) == 1


def test_pyinstrument_is_not_affected_by_a_running_cprofile(
    profiler_slot_taken, make_middleware, store_dir: Path, token: str
) -> None:
    # pyinstrument samples through the legacy profile hook (sys.setprofile), which has its
    # own sys.monitoring slot: the default engine keeps working next to another profiler.
    result = run(make_middleware(), "/", headers={"X-Profile-Token": token})

    assert result.body == b"hello /"
    assert [meta["id"] for meta in stored(store_dir)] == [result.header("X-Profile-Id")]
