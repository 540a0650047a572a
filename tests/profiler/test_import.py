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


def test_the_source_folder_is_not_a_package_named_profiling() -> None:
    # Python 3.15's standard library owns "profiling" (PEP 799).
    assert PACKAGE_ROOT.name != "profiling" or not (PACKAGE_ROOT / "__init__.py").exists()
