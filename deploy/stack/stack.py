""":class:`Stack`: nginx in front of N uWSGI instances, the programs of one supervisord."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from .render import TEMPLATES, render_nginx
from .settings import StackError, StackSettings
from .uwsgi import UwsgiInstance, uwsgi_environment


class NotRunning(StackError):
    """No supervisord answers on the run directory's socket."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """nginx and N uWSGI instances (or uWSGI alone), the programs of a supervisord, which
    :meth:`call` asks anything ``supervisorctl`` would. See the package's doc.

    :param settings: how to run it; the defaults are ``scripts/serve``'s.
    """

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings = settings or StackSettings()
        self.run_dir = Path(os.path.abspath(settings.run_dir))
        self.build_dir = Path(os.path.abspath(settings.build_dir))  # a symlink: not resolved
        self.instances = [
            UwsgiInstance(n + 1, self.run_dir) for n in range(settings.uwsgi_instances)
        ]
        self.nginx_dir = self.run_dir / "nginx"
        self.nginx_log = self.nginx_dir / "error.log"
        self.supervisord_conf = self.run_dir / "supervisord.conf"
        self.supervisord_log = self.run_dir / "supervisord.log"
        #: supervisord, when this process started it.
        self.supervisord: subprocess.Popen | None = None

    @classmethod
    def attach(cls, run_dir: Path) -> Stack:
        """The stack running in ``run_dir`` (NotRunning if none), to stop or reload it from
        another shell."""
        settings = StackSettings(run_dir=run_dir)
        names = [info["name"] for info in cls(settings).call("getAllProcessInfo")]
        settings.uwsgi_instances = sum(name.startswith("uwsgi-") for name in names)
        settings.nginx = settings.nginx if "nginx" in names else None
        return cls(settings)

    @property
    def standalone(self) -> bool:
        return self.settings.nginx is None

    def call(self, method: str, *arguments: object) -> Any:
        """supervisord's ``supervisor.<method>(*arguments)``, over XML-RPC on its unix socket with
        supervisorctl's own transport. NotRunning when nothing answers."""
        transport = SupervisorTransport(None, None, f"unix://{self.run_dir / 'supervisor.sock'}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*arguments)
        except xmlrpc.client.Fault as fault:
            raise StackError(f"supervisord: {method}{arguments}: {fault.faultString}") from None
        except OSError:
            raise NotRunning(f"no stack is running in {self.run_dir}") from None

    def pids(self) -> dict[str, int]:
        """The pid of every running program, by name: ``uwsgi-1`` ... and ``nginx``."""
        return {info["name"]: info["pid"] for info in self.call("getAllProcessInfo") if info["pid"]}

    def nginx_command(self, *arguments: str) -> list[str]:
        files = ["-c", str(self.nginx_dir / "nginx.conf"), "-e", str(self.nginx_log)]
        return [str(self.settings.nginx), "-p", f"{self.nginx_dir}/", *files, *arguments]

    def check_nginx(self) -> None:
        checked = subprocess.run(self.nginx_command("-t", "-q"), capture_output=True, text=True)
        if checked.returncode != 0:
            raise StackError(f"nginx rejected its configuration:\n{checked.stderr.strip()}")

    def render(self) -> None:
        """Write nginx's config (checked by ``nginx -t``) and supervisord's into the run dir."""
        settings = self.settings
        if not self.standalone:
            (self.nginx_dir / "tmp").mkdir(parents=True, exist_ok=True)
            variables = dict(
                build_dir=self.build_dir,
                upstreams=[f"unix:{instance.socket}" for instance in self.instances],
                http_listen=settings.address,
                # Started as root, nginx would run its workers as `nobody`, who can neither read a
                # build in the user's tree (pytest's 0700 tmp dirs) nor connect to 0660 sockets.
                user="root" if os.geteuid() == 0 else None,
                harakiri=settings.uwsgi_options.get("harakiri") or os.environ.get("UWSGI_HARAKIRI"),
            )
            render_nginx(self.nginx_dir, **{**variables, **settings.nginx_options})
            self.check_nginx()
        conf = TEMPLATES.get_template("supervisord.conf.j2")
        user = pwd.getpwuid(os.getuid()).pw_name
        self.supervisord_conf.write_text(conf.render(stack=self, user=user))

    def start(self, *, show_log: bool = False) -> None:
        """Render the configs, start supervisord (its log on stdout too if ``show_log``) and
        wait until every uWSGI worker accepts and /health answers. On any failure, stop what
        started."""
        if self.settings.uwsgi is None:
            raise StackError("uWSGI is not installed (pip install uWSGI; ./scripts/serve does)")
        if self.standalone and len(self.instances) > 1:
            raise StackError("without nginx there is one uWSGI instance (it owns the HTTP port)")
        with contextlib.suppress(NotRunning):  # nothing answers: nothing is running
            pid = self.call("getPID")
            raise StackError(f"a stack (pid {pid}) is already running in {self.run_dir}: stop it")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StackError(f"cannot write {self.run_dir}: {error.strerror}") from None
        self.render()
        # The app's settings and the shared uWSGI options reach uWSGI through supervisord's
        # environment, never a file.
        uwsgi = uwsgi_environment(self.settings.uwsgi_options)
        try:
            # Never a daemon (-n) but in a session of its own: it outlives this process, and a
            # Ctrl-C in the terminal reaches scripts/serve only, which shuts it down in order.
            self.supervisord = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.supervisord_conf],
                env={**os.environ, **self.settings.environment, **uwsgi},
                stdin=subprocess.DEVNULL,
                stdout=None if show_log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for instance in self.instances:
                self.wait(instance.program, instance.log, instance.ready)
            first = self.instances[0]
            front = (first.program, first.log) if self.standalone else ("nginx", self.nginx_log)
            self.wait(*front, self.answers)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop nginx, then each uWSGI instance, gracefully (killed after ``stop_timeout``) and
        wait until supervisord has exited; then remove what they leave (a uWSGI master's FIFO,
        the files of a killed one, the empty pid file of ``nginx -t``)."""
        pid = 0
        with contextlib.suppress(NotRunning):
            pid = self.call("getPID")
            self.call("shutdown")
        if not pid and self.supervisord is not None and self.supervisord.poll() is None:
            pid = self.supervisord.pid
            self.supervisord.terminate()  # not listening yet: SIGTERM is its shutdown too
        timeout = self.settings.stop_timeout * (len(self.instances) + 1) + 10  # one by one
        with contextlib.suppress(psutil.NoSuchProcess):
            if pid and psutil.wait_procs([psutil.Process(pid)], timeout)[1]:
                raise StackError(f"supervisord (pid {pid}) still runs; see {self.supervisord_log}")
        for instance in self.instances:
            instance.remove_files()
        (self.nginx_dir / "nginx.pid").unlink(missing_ok=True)

    def leftovers(self) -> list[Path]:
        """Sockets, FIFOs and pid files in the run directory: none once the stack stopped."""
        return [p for p in self.run_dir.rglob("*") if p.suffix in (".sock", ".fifo", ".pid")]

    def wait(self, program: str, log: Path, ready: Callable[[], bool]) -> None:
        """Until ``ready()``. StackError if ``program`` exits (or is restarted) meanwhile, or
        after ``start_timeout``, with the end of its ``log`` (or supervisord's)."""
        pid, deadline = 0, time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.supervisord is not None and self.supervisord.poll() is not None:
                status, log = f"status {self.supervisord.returncode}", self.supervisord_log
                raise StackError(f"supervisord exited with {status}; {log} ends:\n{log_tail(log)}")
            with contextlib.suppress(NotRunning):  # supervisord is not listening yet
                info = self.call("getProcessInfo", program)
                if pid not in (0, info["pid"]):  # the new one's status says nothing yet
                    raise StackError(
                        f"{program} exited and was restarted; {log} ends:\n{log_tail(log)}"
                    )
                if info["statename"] not in ("STARTING", "RUNNING"):
                    how = f"{info['exitstatus']} ({info['statename']}: {info['description']})"
                    raise StackError(
                        f"{program} exited with status {how}; {log} ends:\n{log_tail(log)}"
                    )
                pid = info["pid"]
                if ready():
                    return
        raise StackError(f"{program} not ready; {log} ends:\n{log_tail(log)}")

    def answers(self) -> bool:
        """/health answers: 200, or 503 when the database is down (the stack is up)."""
        try:
            urllib.request.urlopen(self.settings.url + "/health", timeout=5).close()
        except urllib.error.HTTPError as error:
            return error.code == 503
        except OSError:
            return False
        return True

    def reload(self, *, chain: bool = False) -> None:
        """Reload every uWSGI instance in turn, the next once the previous serves again; then nginx.

        The default is uWSGI's graceful reload (``r`` to the master FIFO, as SIGHUP): the master
        waits for running requests, re-execs itself with the new code, keeps its socket (requests
        wait in its backlog, or go to the other instances) and forks new workers. ``chain``
        (``c``) replaces the workers one at a time from the loaded app: no pause, but no new code
        without ``lazy-apps`` (deploy/README.md).
        """
        for instance in self.instances:
            ready = functools.partial(instance.ready, not_pids=instance.worker_pids())
            instance.command("c" if chain else "r")
            self.wait(instance.program, instance.log, ready)
        if self.standalone:
            return
        # nginx -t, then a graceful reload (it reads a new build's episodes.map), done once the
        # old workers have finished their requests and exited.
        self.check_nginx()
        if "nginx" not in (pids := self.pids()):
            raise StackError(
                f"nginx is not running; {self.nginx_log} ends:\n{log_tail(self.nginx_log)}"
            )
        old_workers = psutil.Process(pids["nginx"]).children()
        self.call("signalProcess", "nginx", "HUP")
        if psutil.wait_procs(old_workers, timeout=self.settings.start_timeout)[1]:
            raise StackError(f"nginx's old workers are still running; see {self.nginx_log}")
