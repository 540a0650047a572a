"""Fixtures of the profiler tests: the test secret, a real store directory."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from request_profiler import ProfilerMiddleware, make_token
from request_profiler.middleware import _one_profile_at_a_time

from .helpers import SECRET, hello_app


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "profiles"


@pytest.fixture
def token() -> str:
    return make_token(SECRET, 600)


@pytest.fixture
def make_middleware(store_dir: Path) -> Callable[..., ProfilerMiddleware]:
    """ProfilerMiddleware with the test secret and the test directory unless told otherwise."""

    def make(app: Callable[..., Iterable[bytes]] = hello_app, **options: Any) -> ProfilerMiddleware:
        options.setdefault("secret", SECRET)
        options.setdefault("directory", store_dir)
        return ProfilerMiddleware(app, **options)

    return make


@pytest.fixture(autouse=True)
def every_profile_ends():
    """A profile left running would hold the process lock and silently stop all profiling."""
    yield
    free = _one_profile_at_a_time.acquire(blocking=False)
    if free:
        _one_profile_at_a_time.release()
    else:
        _one_profile_at_a_time.release()
        pytest.fail("a profile was still running after the test")
