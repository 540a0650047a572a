"""The supervisord of one run directory: start it, ask it things, shut it down.

It is asked through supervisorctl's own XML-RPC transport on the run directory's unix socket,
so whatever this module does, ``supervisorctl -c <run_dir>/supervisord.conf`` can do by hand.
"""

from __future__ import annotations

import subprocess
import sys
import xmlrpc.client
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import psutil
from supervisor.xmlrpc import SupervisorTransport

from .settings import StackError


class NotRunning(StackError):
    """No supervisord answers on the run directory's socket."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Program(NamedTuple):
    """A program of supervisord: its name there, what it is to a reader, and its log."""

    name: str
    what: str
    log: Path


class Supervisor:
    """supervisord running ``run_dir/supervisord.conf`` (see render.render_supervisord).

    :param run_dir: the stack's run directory, with the config, socket, pid file and log.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.config = run_dir / "supervisord.conf"
        self.log = run_dir / "supervisord.log"
        self.serverurl = f"unix://{run_dir / 'supervisor.sock'}"
        #: supervisord in the foreground, when this process started it so.
        self.popen: subprocess.Popen | None = None

    def start(
        self, environment: Mapping[str, str], *, detach: bool, output: int | IO[Any] | None
    ) -> None:
        """Start supervisord with ``environment`` (which every program inherits): as a daemon
        (``detach``), or in the foreground as a child of this process, writing its log to
        ``output`` too. In a session of its own either way: a Ctrl-C in the terminal reaches
        scripts/serve only, which then shuts supervisord down in order."""
        command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config)]
        if detach:
            done = subprocess.run(command, env=environment, capture_output=True, text=True)
            if done.returncode != 0:
                raise StackError(f"supervisord did not start: {done.stderr.strip()}")
            return
        self.popen = subprocess.Popen(
            [*command, "--nodaemon"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def call(self, method: str, *arguments: object) -> Any:
        """``supervisor.<method>(*arguments)`` over XML-RPC. NotRunning when nothing answers."""
        transport = SupervisorTransport(None, None, self.serverurl)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*arguments)
        except xmlrpc.client.Fault as fault:
            raise StackError(f"supervisord: {method}{arguments}: {fault.faultString}") from None
        except OSError:
            if self.popen is not None and self.popen.poll() is not None:
                raise StackError(
                    f"supervisord exited with status {self.popen.returncode}; "
                    f"{self.log} ends:\n{log_tail(self.log)}"
                ) from None
            raise NotRunning(f"no stack is running in {self.run_dir}") from None

    def running(self) -> bool:
        try:
            return self.call("getState")["statename"] == "RUNNING"
        except NotRunning:
            return False

    def up(self, program: Program, pid: int = 0) -> int:
        """The pid of ``program``, starting or running (and still ``pid``, if given); if not,
        StackError saying how it exited, with the end of its log."""
        info = self.call("getProcessInfo", program.name)
        restarted = pid and info["pid"] not in (0, pid)
        if restarted or info["statename"] not in ("STARTING", "RUNNING"):
            how = f"with status {info['exitstatus']} ({info['statename']}: {info['description']})"
            raise StackError(
                f"{program.what} exited {how}; {program.log} ends:\n{log_tail(program.log)}"
            )
        return info["pid"]

    def pids(self) -> dict[str, int]:
        """The pid of every program that runs, by program name."""
        return {info["name"]: info["pid"] for info in self.call("getAllProcessInfo") if info["pid"]}

    def shutdown(self, timeout: float) -> None:
        """Stop every program (in reverse priority order, each gracefully, killed after its
        ``stopwaitsecs``) and wait until supervisord has exited. Nothing running: nothing to do."""
        if self.popen is not None and self.popen.poll() is not None:
            return
        try:
            pid = self.call("getPID")
            self.call("shutdown")
        except NotRunning:
            if self.popen is None:
                return
            pid = self.popen.pid
            self.popen.terminate()  # not listening yet: SIGTERM is its shutdown too
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise StackError(f"supervisord (pid {pid}) still runs; see {self.log}") from None
