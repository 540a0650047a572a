"""A store that cannot write never fails a request, and says so once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import request_profiler
from request_profiler import CProfileProfiler

from .helpers import hello_app, run


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "request_profiler" and "storing" in r.getMessage()
    ]


def test_an_unwritable_store_directory_is_logged_once_and_requests_are_served(
    make_middleware, tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the store's parent is a file, so mkdir and open fail even for root")
    middleware = make_middleware(directory=blocker / "profiles")

    results = [run(middleware, f"/{n}", headers={"X-Profile-Token": token}) for n in range(3)]

    assert [(r.status, r.body) for r in results] == [
        ("200 OK", f"hello /{n}".encode()) for n in range(3)
    ]
    assert len(store_warnings(caplog)) == 1
    assert caplog.records[0].exc_info is not None  # the cause is in the log


def test_a_failure_after_a_recovery_is_logged_again(
    make_middleware, tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    parent = tmp_path / "parent"
    parent.write_text("a file for now")
    middleware = make_middleware(directory=parent / "profiles")
    profile = {"headers": {"X-Profile-Token": token}}

    run(middleware, **profile)
    parent.unlink()
    parent.mkdir()
    run(middleware, **profile)  # succeeds
    (parent / "profiles").rename(parent / "moved")
    (parent / "profiles").write_text("now a file")
    run(middleware, **profile)

    assert len(store_warnings(caplog)) == 2
    assert len(list((parent / "moved").glob("*.profile"))) == 1


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into a 0o500 directory anyway; the file-parent test covers it",
)
def test_a_read_only_store_directory(make_middleware, store_dir: Path, token: str, caplog) -> None:
    store_dir.mkdir(mode=0o500)

    result = run(make_middleware(), headers={"X-Profile-Token": token})

    assert result.body == b"hello /"
    assert len(store_warnings(caplog)) == 1


_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from wsgiref.util import setup_testing_defaults
    from request_profiler import ProfilerMiddleware, make_token

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("request_profiler").addHandler(handler)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"served"]

    middleware = ProfilerMiddleware(app, secret="s" * 32, directory=sys.argv[1])
    # No file may grow past 100 bytes: every write of a profile fails as on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
    bodies = []
    for _ in range(3):
        environ = {"HTTP_X_PROFILE_TOKEN": make_token("s" * 32, 60)}
        setup_testing_defaults(environ)
        body = middleware(environ, lambda status, headers, exc_info=None: None)
        bodies.append(b"".join(body).decode())
        body.close()
    middleware.flush()
    print(json.dumps({"bodies": bodies, "warnings": warnings}))
    """
)


def test_a_full_disk_is_logged_once_and_leaves_no_partial_files(tmp_path: Path) -> None:
    package_root = Path(request_profiler.__file__).parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
    }
    store_dir = tmp_path / "profiles"

    completed = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(store_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    outcome = json.loads(completed.stdout)
    assert outcome["bodies"] == ["served"] * 3
    assert len(outcome["warnings"]) == 1 and "storing a profile failed" in outcome["warnings"][0]
    assert [path.name for path in store_dir.iterdir()] == []


def test_huge_and_many_repeated_tokens_pass_through(make_middleware) -> None:
    query = "&".join(["_profile=" + "A" * 100] * 2000)
    result = run(
        make_middleware(), "/", query_string=query, headers={"X-Profile-Token": "x" * 100_000}
    )

    assert result == run(
        hello_app, "/", query_string=query, headers={"X-Profile-Token": "x" * 100_000}
    )


class _RefusingProfiler(CProfileProfiler):
    """cProfile as Python 3.12 behaves when a debugger or coverage already profiles."""

    name = "refusing"

    def start(self, description: str) -> None:
        raise ValueError("Another profiling tool is already active")


class _FailingStopProfiler(CProfileProfiler):
    """cProfile whose recording cannot be stopped, as pyinstrument on another thread."""

    name = "failing-stop"

    def stop_deferred(self):
        super().stop_deferred()
        raise RuntimeError("Failed to stop profiling")


def test_a_profiler_that_cannot_start_leaves_requests_unprofiled(
    make_middleware, store_dir: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = make_middleware(profiler=_RefusingProfiler())
    headers = {"X-Profile-Token": token}

    results = [run(middleware, "/", headers=headers) for _ in range(2)]

    assert results == [run(hello_app, "/", headers=headers)] * 2
    assert [r.getMessage() for r in caplog.records].count(
        "request_profiler: starting the profiler failed; requests are still served. "
        "Further failures are not logged until it succeeds again."
    ) == 1
    assert not store_dir.exists()


def test_a_profiler_that_cannot_stop_keeps_nothing_and_frees_the_lock(
    make_middleware, store_dir: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(
        make_middleware(profiler=_FailingStopProfiler()), "/", headers={"X-Profile-Token": token}
    )

    assert result.body == b"hello /"
    assert any("stopping the profiler failed" in r.getMessage() for r in caplog.records)
    assert not store_dir.exists()
