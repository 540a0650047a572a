"""The API's OpenAPI 3.1 description is valid, and the live API keeps to it.

``openapi-spec-validator`` checks the document against the OpenAPI 3.1
schema. Then ``schemathesis run`` (its CLI, as a team would run it) sends
property-based requests to the app served over real HTTP on each database,
with its default checks: no 5xx, every status code, content type, header and
body as documented, valid input accepted and invalid input rejected,
undocumented methods answered 405 with Allow. Bounded: 25 examples per
operation and phase, about 15 s per database here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from werkzeug.serving import make_server

from webapp.openapi import openapi_document

#: Examples per operation and phase: enough to reach every parameter's edges, ~15 s a run.
MAX_EXAMPLES = 25


def test_the_document_is_valid_openapi_3_1(client):
    document = client.get("/api/openapi.json").get_json()
    assert document == openapi_document("https://podcast.test")
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["servers"] == [{"url": "https://podcast.test/api"}]


@pytest.fixture
def live_url(app) -> Iterator[str]:
    """The app served over HTTP on a free port, in a thread of this process."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_schemathesis_finds_the_live_api_true_to_its_description(live_url, tmp_path: Path):
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a dev dependency (pyproject.toml)"
    result = subprocess.run(
        [
            schemathesis,
            "--no-color",
            "run",
            f"{live_url}/api/openapi.json",
            "--url",
            f"{live_url}/api",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its example database (.hypothesis) stays out of the tree
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
