"""A real browser for the security tests: Debian's headless Chromium, one page per run.

    dom = Chromium(path).dump_dom("http://127.0.0.1:8123/_profiler/")

Each run gets a fresh, empty profile directory (no cookie, no cache, no state
from an earlier page), loads one URL, lets its scripts run, and prints the DOM
as it then is (``--dump-dom``). A script that ran leaves its mark there, e.g.
an attribute set on ``<html>``. The browser's process group is ours and is
killed by its id if a page hangs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile

#: Flags for a quiet, self-contained headless run: no sandbox (root in CI), no GPU, no network
#: beyond the page (no QUIC, background services, component updates or sync), no first-run UI.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Chromium:
    """Runs ``chromium`` at ``path``; every page load is bounded by ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def dump_dom(self, url: str, *, wait_ms: int = 2000) -> str:
        """The DOM of ``url`` after its scripts ran (``wait_ms`` of virtual time for timers)."""
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            command = [
                self.path,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={wait_ms}",
                "--dump-dom",
                url,
            ]
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its renderer and helper processes share our group id
            )
            try:
                out, err = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                # The browser is still running, so the group is still its own.
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise
        if process.returncode != 0:
            raise RuntimeError(
                f"chromium exited {process.returncode} on {url}: {err.decode()[-2000:]}"
            )
        return out.decode()
