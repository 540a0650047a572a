"""One uWSGI instance of the stack: its files, and what its master FIFO and stats server say."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any


def uwsgi_environment(options: Mapping[str, str]) -> dict[str, str]:
    """uWSGI options as the variables deploy/uwsgi/uwsgi.ini reads: ``{"harakiri": "5"}`` is
    ``UWSGI_HARAKIRI=5``. Options reach uWSGI this way, never through a file."""
    return {"UWSGI_" + name.upper().replace("-", "_"): value for name, value in options.items()}


class UwsgiInstance:
    """uWSGI master number ``number`` and its workers, ``uwsgi:uwsgi-<number>`` in supervisord
    (its ``program``), with its socket, master FIFO, stats socket, pid file and log in ``run_dir``.

    :param number: 1, 2 ... (each instance is one server of nginx's upstream).
    :param run_dir: the stack's run directory.
    """

    def __init__(self, number: int, run_dir: Path) -> None:
        self.name = f"uwsgi-{number}"
        self.program = f"uwsgi:{self.name}"
        self.socket, self.fifo, self.stats_socket, self.pid_file, self.log = (
            run_dir / f"{self.name}{suffix}"
            for suffix in (".sock", ".fifo", "-stats.sock", ".pid", ".log")
        )

    def remove_files(self) -> None:
        """What a stopped instance leaves: the FIFO (``vacuum`` removes the rest), and every file
        of a killed master. Only call it when the instance is not running."""
        for path in (self.socket, self.fifo, self.stats_socket, self.pid_file):
            path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """uWSGI's stats server JSON: the master's pid, the listen queue, each worker's pid,
        status, requests and memory."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(2.0)
            connection.connect(str(self.stats_socket))
            return json.loads(connection.makefile("rb").read())

    def worker_pids(self) -> list[int]:
        return [worker["pid"] for worker in self.stats()["workers"] if worker["pid"]]

    def command(self, letters: str) -> None:
        """Write to the master FIFO: ``r`` graceful reload, ``c`` chain reload, ``q`` graceful
        stop (uWSGI's Master FIFO). Never blocks: OSError if no master reads it."""
        with open(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK), "w") as fifo:
            fifo.write(letters)

    def ready(self, *, not_pids: Collection[int] = ()) -> bool:
        """Every worker is up and accepting (and, after a reload, none of ``not_pids``)."""
        try:
            workers = self.stats()["workers"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(workers) and all(
            worker["pid"] not in (0, *not_pids)
            and worker.get("accepting")
            and worker["status"] in ("idle", "busy")
            for worker in workers
        )
