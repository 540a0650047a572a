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


def _resolve(document: dict, item: dict) -> dict:
    while "$ref" in item:
        _, kind, name = item["$ref"].removeprefix("#/").split("/")
        item = document["components"][kind][name]
    return item


#: Every error status a client of the API can get, from the app (webapp/errors.py) or from
#: nginx in front of it (deploy/nginx/site.conf.j2), each as problem details.
ERROR_STATUSES = [400, 404, 405, 412, 413, 414, 429, 500, 501, 502, 503, 504]


@pytest.mark.parametrize("status", ERROR_STATUSES)
def test_every_error_an_operation_can_answer_is_described_as_problem_details(status):
    """A client generated from the description parses any error it gets, not only the 400s,
    404s and 503s the operations name: a 405, nginx's 413, 429, 502 …, and the 400 that a query
    string which is not UTF-8 gets on every operation."""
    document = openapi_document("https://podcast.test")
    for path, item in document["paths"].items():
        responses = item["get"]["responses"]
        described = _resolve(document, responses.get(str(status)) or responses.get("default", {}))
        content = described.get("content", {})
        assert list(content) == ["application/problem+json"], (path, status)
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }


@pytest.mark.parametrize("path", ["/api/episodes/3", "/api/openapi.json"])
def test_a_query_string_not_utf8_is_a_400_problem_on_every_operation(client, path):
    response = client.get(path + "?q=%FF")
    assert (response.status_code, response.mimetype) == (400, "application/problem+json")


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
