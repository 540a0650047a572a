"""Fixtures shared by the whole suite.

Every test that touches the database runs twice, on a fresh SQLite file and
on a fresh schema in a real PostgreSQL server (``TEST_DATABASE_URL``). A
missing service skips those tests with the reason, or fails them when
``REQUIRE_SERVICES=1`` (as .ci/run sets it), so CI can never pass by skipping.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg2
import pytest
from flask import Flask

from webapp import create_app
from webapp.db import get_database
from webapp.db.seed import seed


def run_flask(
    *arguments: str, env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``flask --app webapp ARGUMENTS`` in a process of its own, as an operator runs it: what
    it prints when the app cannot even be made (a bad setting) is Flask's, not a test client's."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", *arguments],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def traced_growth(run: Callable[[], object]) -> int:
    """The bytes of memory that ``run()`` leaves allocated (tracemalloc, garbage collected):
    what a long-lived worker keeps of the requests ``run`` makes."""
    gc.collect()
    tracemalloc.start()
    try:
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


#: Episodes in the seed most tests use: enough for several API pages.
SMALL_SEED = 30

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def require_service(available: object, reason: str) -> None:
    """Skip (or, under REQUIRE_SERVICES=1, fail) when a real service is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The path of an executable the test needs, e.g. ``require_binary("nginx")``."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name) if p.exists()),
        None,
    )
    require_service(path, f"{name} is not installed")
    return path  # type: ignore[return-value]


def postgres_admin_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", "")
    require_service(url, "TEST_DATABASE_URL is not set (a PostgreSQL database the tests may use)")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to a fresh, empty schema in the test PostgreSQL database, dropped afterwards."""
    admin_url = postgres_admin_url()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        connection = psycopg2.connect(admin_url, connect_timeout=5)
    except psycopg2.OperationalError as error:
        require_service(False, f"cannot connect to TEST_DATABASE_URL: {str(error).splitlines()[0]}")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if urlsplit(admin_url).query else "?"
    # libpq URIs percent-decode but do not turn "+" into a space.
    yield admin_url + separator + "options=" + quote(f"-c search_path={schema}", safe="")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA {schema} CASCADE")
    connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.sqlite3"
    return request.getfixturevalue("postgres_url")


def make_app(database_url: str, tmp_path: Path, **overrides: object) -> Flask:
    """An app on ``database_url`` with every run-time file under ``tmp_path``."""
    settings = {
        "DATABASE_URL": database_url,
        "VAR_DIR": str(tmp_path / "var"),
        "SITE_URL": "https://podcast.test",
        "TESTING": True,
    }
    settings.update(overrides)
    app = create_app(settings)
    get_database(app).init_schema()
    return app


@pytest.fixture
def empty_app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """An app whose database has the schema and no episodes."""
    app = make_app(database_url, tmp_path)
    yield app
    get_database(app).close()


@pytest.fixture
def app(empty_app: Flask) -> Flask:
    """An app with ``SMALL_SEED`` episodes."""
    with get_database(empty_app).session() as session:
        seed(session, SMALL_SEED)
    return empty_app


@pytest.fixture
def client(app: Flask):
    return app.test_client()
