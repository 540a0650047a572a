"""pa11y reports nothing on the site's main pages, served by the real stack.

pa11y-ci loads each page in headless Chromium (Debian's: Puppeteer's own
download is skipped) and runs two engines on it, HTML_CodeSniffer and axe,
at WCAG 2 AA, errors and warnings both. ``scripts/install-a11y`` installs it
(npm); without npm or Chromium the test skips with the reason, or fails under
REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.stack import Stack
from deploy.stack.settings import PROJECT_ROOT
from tests.conftest import require_binary, require_service

from .conftest import Site
from .test_serving import episode_paths

pytestmark = pytest.mark.stack

A11Y = PROJECT_ROOT / "tests" / "a11y"
PA11Y_CI = A11Y / "node_modules" / ".bin" / "pa11y-ci"


@pytest.fixture(scope="module")
def pa11y_ci() -> Path:
    require_binary("node")
    require_binary("npm")
    result = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "install-a11y")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    require_service(
        result.returncode == 0 and PA11Y_CI.exists(),
        f"scripts/install-a11y failed: {result.stderr.strip()[-500:]}",
    )
    return PA11Y_CI


def test_pa11y_reports_nothing_on_the_main_pages(
    site_stack: Stack, site: Site, pa11y_ci: Path, tmp_path: Path
) -> None:
    chromium = require_binary("chromium")
    config = {
        "defaults": {
            "runners": ["htmlcs", "axe"],
            "standard": "WCAG2AA",
            "includeWarnings": True,
            "timeout": 60_000,
            "chromeLaunchConfig": {
                "executablePath": chromium,
                # As root (CI) Chromium refuses to start sandboxed; the pages are our own.
                "args": ["--no-sandbox", "--disable-dev-shm-usage"],
            },
        }
    }
    (tmp_path / "pa11y-ci.json").write_text(json.dumps(config))
    url = site_stack.settings.url
    with_chapters = next(path for path in episode_paths(site) if path.startswith("/episodes/12/"))
    pages = [
        "/",
        "/episodes/",
        with_chapters,
        "/search",
        "/search?q=python",
        "/episodes/12/transcript.html",
        "/no-such-page",
    ]
    result = subprocess.run(
        [str(pa11y_ci), "--config", str(tmp_path / "pa11y-ci.json"), "--json"]
        + [url + page for page in pages],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=A11Y,
        check=False,
    )
    assert result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout)
    issues = {
        page: [
            f"{issue.get('runner')} {issue.get('code')}: {issue.get('message')}" for issue in found
        ]
        for page, found in report["results"].items()
        if found
    }
    assert issues == {}
    assert (report["total"], report["passes"], report["errors"]) == (len(pages), len(pages), 0)
    assert result.returncode == 0
