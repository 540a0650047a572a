"""The package stands alone: no web framework, and no name the standard library will take."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import request_profiler

PACKAGE_ROOT = Path(request_profiler.__file__).resolve().parent.parent

_CHECK = """
import sys
from request_profiler import ProfilerMiddleware, record_sql, sql_capture_active

ProfilerMiddleware(lambda environ, start_response: [])
loaded = [name for name in ("flask", "werkzeug", "itsdangerous", "jinja2") if name in sys.modules]
print(",".join(loaded))
"""


def test_importing_and_wrapping_without_a_secret_loads_no_framework() -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == ""


_WITHOUT_PSYCOPG2 = """
import sys
sys.modules["psycopg2"] = None  # what an environment without it gives: ImportError on import
from request_profiler import PostgresStore, ProfilerMiddleware, make_token

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

middleware = ProfilerMiddleware(app, secret="s" * 32, directory=sys.argv[1])
statuses = []
body = middleware(
    {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_X_PROFILE_TOKEN": make_token("s" * 32, 60)},
    lambda status, headers, exc_info=None: statuses.append(status),
)
print(b"".join(body).decode(), statuses[0])
body.close()
try:
    PostgresStore("postgresql:///profiles")
except ImportError as error:
    print(error)
"""


def test_without_psycopg2_the_middleware_profiles_and_only_postgres_store_needs_it(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PSYCOPG2, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    ok, missing = completed.stdout.splitlines()
    assert ok == "ok 200 OK"
    assert len(list(tmp_path.glob("*.profile"))) == 1
    assert "pip install psycopg2-binary" in missing


def test_the_source_folder_is_not_a_package_named_profiling() -> None:
    # Python 3.15's standard library owns "profiling" (PEP 799).
    assert PACKAGE_ROOT.name != "profiling" or not (PACKAGE_ROOT / "__init__.py").exists()
