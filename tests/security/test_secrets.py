"""A weak profiling secret stops the site; token lifetimes outside 1 s..ceiling are usage errors.

These run the real entry points in a subprocess: ``webapp.wsgi`` as uWSGI
imports it, and the ``flask`` command as people type it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from request_profiler import TokenVerifier

from tests.profiler.helpers import SECRET

FLASK = str(Path(sys.executable).with_name("flask"))


def run_site(tmp_path: Path, *command: str, **settings: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/site.sqlite3",
        "VAR_DIR": str(tmp_path / "var"),
        **settings,
    }
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


@pytest.mark.parametrize("weak", ["Qz9", "hunter2-hunter2", "x" * 31])
def test_the_site_refuses_to_start_with_a_weak_secret(tmp_path: Path, weak: str) -> None:
    result = run_site(tmp_path, sys.executable, "-c", "import webapp.wsgi", PROFILER_SECRET=weak)

    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "PROFILER_SECRET" in message and "at least 32" in message
    assert "secrets.token_urlsafe(32)" in message  # how to make one
    assert weak not in result.stderr


def test_the_site_starts_with_a_32_byte_secret(tmp_path: Path) -> None:
    result = run_site(
        tmp_path, sys.executable, "-c", "import webapp.wsgi", PROFILER_SECRET="k" * 32
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "ttl, expected",
    [
        ("0.5s", "shorter than the shortest lifetime, 1 s"),
        ("0", "shorter than the shortest lifetime, 1 s"),
        ("-1h", "not a duration"),
        ("1d1s", "not a duration"),
        ("25h", "longer than PROFILER_TOKEN_MAX_TTL (86400 s)"),
        ("99999999999999999999d", "longer than PROFILER_TOKEN_MAX_TTL (86400 s)"),
        ("1" * 400, "not a usable duration"),
    ],
)
def test_a_lifetime_out_of_bounds_is_a_usage_error(tmp_path: Path, ttl: str, expected: str) -> None:
    result = run_site(
        tmp_path, FLASK, "--app", "webapp", "profiler-token", "--ttl", ttl, PROFILER_SECRET=SECRET
    )

    assert result.returncode == 2, result.stderr  # click's usage error
    assert "Usage: flask profiler-token" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("ttl, ceiling, seconds", [("1s", "1d", 1), ("2d", "2d", 2 * 86400)])
def test_a_lifetime_within_bounds_makes_a_token_the_site_accepts(
    tmp_path: Path, ttl: str, ceiling: str, seconds: int
) -> None:
    # Checked as of when it was asked for: starting the command may take longer than 1 s.
    asked_at = time.time()
    result = run_site(
        tmp_path,
        FLASK,
        "--app",
        "webapp",
        "profiler-token",
        "--ttl",
        ttl,
        PROFILER_SECRET=SECRET,
        PROFILER_TOKEN_MAX_TTL=ceiling,
    )

    assert result.returncode == 0, result.stderr
    answered_at = time.time()
    took = answered_at - asked_at
    verifier = TokenVerifier(SECRET, max_ttl=seconds + took + 1, clock=lambda: asked_at)
    expires = verifier.expires_at(result.stdout.strip())
    assert expires is not None  # signed with the secret, and not expired when asked for
    assert asked_at + seconds - 1 <= expires <= answered_at + seconds + 1
