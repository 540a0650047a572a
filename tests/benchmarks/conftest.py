"""Benchmark fixtures: the default 600-episode seed, built once per backend run.

Benchmarks run with ``./scripts/test --benchmark`` (or ``pytest tests/benchmarks
--benchmark-only``); the normal run skips them. They compare against a
baseline measured in the same run, never against wall-clock constants.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_app
from webapp.db import get_database
from webapp.db.seed import seed

DEFAULT_SEED = 600


@pytest.fixture(scope="session")
def seeded_sqlite_app(tmp_path_factory: pytest.TempPathFactory):
    tmp_path: Path = tmp_path_factory.mktemp("bench")
    app = make_app(f"sqlite:///{tmp_path}/bench.sqlite3", tmp_path)
    with get_database(app).session() as session:
        seed(session, DEFAULT_SEED)
    return app
