"""pyinstrument's hook is set only once a request has run for one interval (``timer_start``).

The hook on every call is what a profiled request pays for (on Python 3.11 it also turns
off the specialised interpreter), and a request shorter than the interval gets no sample
from it. These tests run real requests: busy ones that must be sampled from their start,
quick ones that must be recorded without samples, and servers that check the SIGALRM
timer is never armed while they have control.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from request_profiler import DirectoryStore, PyinstrumentProfiler

from deploy.stack.settings import UWSGI_INI, find_uwsgi
from tests.conftest import require_service
from tests.stack.support import free_port, uwsgi_alone_environment

from .helpers import BUSY_SECONDS, busy_app, run, spin


def session_of(store_dir: Path, result) -> dict[str, Any]:
    profile_id = result.header("X-Profile-Id")
    assert profile_id, "the request was not profiled"
    found = DirectoryStore(store_dir).load(profile_id)
    assert found is not None
    return json.loads(found[1])


def sampled_seconds(session: dict[str, Any]) -> float:
    return sum(seconds for _, seconds in session["frame_records"])


def frame_names(session: dict[str, Any]) -> set[str]:
    return {frame.split("\x00", 1)[0] for stack, _ in session["frame_records"] for frame in stack}


@pytest.fixture
def no_alarm_handler() -> Iterator[None]:
    """SIGALRM as a fresh process has it (the middleware installs its handler on first use)."""
    before = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, before)


def test_a_busy_request_is_sampled_from_its_start(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    result = run(make_middleware(busy_app), "/busy", headers={"X-Profile-Token": token})

    assert result.body == b"done /busy"
    session = session_of(store_dir, result)
    assert "spin" in frame_names(session)
    assert session["sample_count"] >= 2  # fewer than 30 when the machine is busy
    # The first sample counts from the request's start, not from when the hook was set.
    assert session["duration"] >= BUSY_SECONDS
    assert sampled_seconds(session) >= 0.8 * session["duration"]
    assert session["cpu_time"] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_request_shorter_than_the_interval_is_recorded_without_samples(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    middleware = make_middleware(busy_app, interval=10.0)
    started = time.time()
    result = run(middleware, "/quick", headers={"X-Profile-Token": token})

    session = session_of(store_dir, result)
    assert session["frame_records"] == [] and session["sample_count"] == 0
    assert started <= session["start_time"] <= time.time()
    assert 0 < session["duration"] < 10.0
    assert session["target_description"] == "GET /quick"
    assert session["start_call_stack"]  # where the profile started, as pyinstrument has it
    # pyinstrument reads it back, and the viewer's page renders it.
    page = middleware.profiler.render_html(json.dumps(session).encode())
    assert "pyinstrumentHTMLRenderer" in page
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_timer_is_never_armed_while_the_server_has_control(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    armed_inside: list[bool] = []

    def streaming_app(environ: dict[str, Any], start_response: Callable[..., Any]):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            for chunk in (b"a", b"b", b"c"):
                armed_inside.append(signal.getitimer(signal.ITIMER_REAL)[0] > 0)
                yield chunk

        return body()

    middleware = make_middleware(streaming_app, interval=10.0)
    armed_outside = []
    response = middleware(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "HTTP_X_PROFILE_TOKEN": token},
        lambda status, headers, exc_info=None: None,
    )
    armed_outside.append(signal.getitimer(signal.ITIMER_REAL)[0] > 0)
    chunks = []
    for chunk in response:
        chunks.append(chunk)
        armed_outside.append(signal.getitimer(signal.ITIMER_REAL)[0] > 0)
    response.close()

    assert b"".join(chunks) == b"abc"
    assert armed_inside == [True, True, True]  # the generator is the application's code
    assert armed_outside == [False] * 4
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_streamed_body_is_sampled_while_it_is_made(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    def streaming_app(environ: dict[str, Any], start_response: Callable[..., Any]):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            for _ in range(3):
                spin(BUSY_SECONDS / 3)
                time.sleep(0.002)  # the server writes: the timer waits
                yield b"x"

        return body()

    result = run(make_middleware(streaming_app), "/stream", headers={"X-Profile-Token": token})

    assert result.body == b"xxx"
    assert "spin" in frame_names(session_of(store_dir, result))


def test_an_application_handling_sigalrm_keeps_its_handler_and_is_profiled_anyway(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    alarms: list[int] = []
    signal.signal(signal.SIGALRM, lambda signum, frame: alarms.append(signum))

    result = run(make_middleware(busy_app), "/busy", headers={"X-Profile-Token": token})

    assert "spin" in frame_names(session_of(store_dir, result))
    assert alarms == []  # the middleware never armed a timer for the application's handler
    assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_application_ignoring_sigalrm_keeps_it_ignored_and_is_profiled_anyway(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)

    result = run(make_middleware(busy_app), "/busy", headers={"X-Profile-Token": token})

    assert "spin" in frame_names(session_of(store_dir, result))  # sampled by the hook instead
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_IGN
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_application_that_takes_sigalrm_during_a_request_keeps_its_timer(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    def arms_its_own_alarm(environ, start_response):
        # What a library's timeout does (signal.alarm and setitimer share one timer).
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
        signal.setitimer(signal.ITIMER_REAL, 30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"armed"]

    result = run(make_middleware(arms_its_own_alarm), "/", headers={"X-Profile-Token": token})

    assert result.body == b"armed"
    assert session_of(store_dir, result)["duration"] > 0
    # The middleware's pause and stop left the application's timer running.
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 25


def test_a_request_on_another_thread_is_sampled_from_its_start(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    results = []
    middleware = make_middleware(busy_app)
    worker = threading.Thread(
        target=lambda: results.append(run(middleware, "/busy", headers={"X-Profile-Token": token}))
    )
    worker.start()
    worker.join(10)

    session = session_of(store_dir, results[0])
    assert "spin" in frame_names(session)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # signals are the main thread's


def test_without_timer_start_the_hook_is_set_at_once(
    no_alarm_handler, make_middleware, store_dir: Path, token: str
) -> None:
    middleware = make_middleware(busy_app, profiler=PyinstrumentProfiler(timer_start=False))

    result = run(middleware, "/busy", headers={"X-Profile-Token": token})

    assert "spin" in frame_names(session_of(store_dir, result))
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


# --- On uWSGI, as deployed ------------------------------------------------------------------


@pytest.fixture
def uwsgi_busy_app(tmp_path: Path, store_dir: Path) -> Iterator[str]:
    """busy_app profiled by one worker of the shipped uwsgi.ini, over HTTP: its base URL."""
    uwsgi = find_uwsgi()
    require_service(uwsgi, "uWSGI is not installed in this environment (pip install uWSGI)")
    port = free_port()
    environment = (
        os.environ
        | uwsgi_alone_environment(tmp_path, port)
        | {
            "UWSGI_MODULE": "tests.profiler.uwsgi_busy_app:application",
            "PROFILER_TEST_DIR": str(store_dir),
            "PYTHONPATH": str(UWSGI_INI.parents[2]),
        }
    )
    with open(tmp_path / "uwsgi.log", "wb") as log:
        server = subprocess.Popen(
            [str(uwsgi), "--ini", str(UWSGI_INI)], env=environment, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "uwsgi.log").read_text()
                assert time.monotonic() < deadline, "uWSGI did not listen within 60 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        (tmp_path / "uwsgi.fifo").write_text("q")  # graceful stop: the writer is drained
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_on_uwsgi_busy_requests_are_sampled_and_responses_stay_whole(
    uwsgi_busy_app: str, store_dir: Path, token: str
) -> None:
    answers = {}
    for path in ("/busy", "/quick", "/stream"):
        connection = http.client.HTTPConnection(uwsgi_busy_app, timeout=30)
        connection.request("GET", path, headers={"X-Profile-Token": token})
        response = connection.getresponse()
        answers[path] = (response.status, response.read(), response.getheader("X-Profile-Id"))
        connection.close()
    assert answers["/busy"][:2] == (200, b"done /busy")
    assert answers["/quick"][:2] == (200, b"done /quick")
    assert answers["/stream"][:2] == (200, b"abc")

    store = DirectoryStore(store_dir)
    deadline = time.monotonic() + 10
    while len(store.recent()) < 3 and time.monotonic() < deadline:  # the worker's writer thread
        time.sleep(0.05)
    sessions = {}
    for path, (_, _, profile_id) in answers.items():
        assert profile_id, f"{path} was not profiled"
        found = store.load(profile_id)
        assert found is not None, f"{path}'s profile was not stored"
        sessions[path] = json.loads(found[1])
    busy = sessions["/busy"]
    assert "spin" in frame_names(busy)
    assert sampled_seconds(busy) >= 0.8 * busy["duration"] >= 0.8 * BUSY_SECONDS
    assert "spin" in frame_names(sessions["/stream"])
    assert sessions["/quick"]["duration"] > 0
