"""Secrets stay out of what the site writes down: its log during a database outage, its pages.

The site runs in a subprocess with logging as deployed (Flask's handler on
stderr, which uWSGI and systemd keep), on a PostgreSQL URL whose server is
not there: every request is a 503, and each writes a log line naming the
database. The tokens in nginx's and uWSGI's logs are checked on the real
stack (tests/stack/test_serving.py::test_profiling_tokens_never_reach_the_logs).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = "pw-4ad1e0b6c7"

#: The forms libpq accepts a password in, that DATABASE_URL takes.
URL_FORMS = {
    "userinfo": "postgresql://podcast:{password}@127.0.0.1:{port}/podcast",
    "query": "postgresql://podcast@127.0.0.1:{port}/podcast?password={password}",
    "query, encoded name": "postgres://podcast@127.0.0.1:{port}/podcast?pass%77ord={password}",
    "userinfo with @ and /": "postgresql://podcast:{password}@x/y@127.0.0.1:{port}/podcast",
}

SERVE_A_FEW_REQUESTS = """
import json, logging, sys
from webapp import create_app
app = create_app()
client = app.test_client()
answers = {path: client.get(path) for path in ("/health", "/", "/api/episodes")}
print(json.dumps({path: [r.status_code, r.get_data(as_text=True)] for path, r in answers.items()}))
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("form", URL_FORMS)
def test_a_database_outage_logs_no_password(tmp_path: Path, form: str) -> None:
    url = URL_FORMS[form].format(password=PASSWORD, port=closed_port())
    result = subprocess.run(
        [sys.executable, "-c", SERVE_A_FEW_REQUESTS],
        env={"DATABASE_URL": url, "VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    answers = json.loads(result.stdout)
    assert {status for status, _ in answers.values()} == {503}
    assert "WARNING in errors: 503: " in result.stderr  # the log lines are there
    assert PASSWORD not in result.stderr
    assert not [body for _, body in answers.values() if PASSWORD in body]
