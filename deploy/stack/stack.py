""":class:`Stack`: nginx in front of N uWSGI instances, the programs of one :class:`Supervisor`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
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

from .render import NginxConfig, render_nginx, render_supervisord
from .settings import DEFAULT_HARAKIRI, NginxTuning, StackError, StackSettings, find_nginx
from .uwsgi import UwsgiInstance


class NotRunning(StackError):
    """No supervisord answers on the run directory's socket."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Supervisor:
    """supervisord running ``run_dir/supervisord.conf``, asked over supervisorctl's own XML-RPC
    transport on its unix socket: whatever this class does, ``supervisorctl -c`` does by hand.

    :param run_dir: the stack's run directory, with the config, socket, pid file and log.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.config = run_dir, run_dir / "supervisord.conf"
        self.log = run_dir / "supervisord.log"
        #: supervisord, when this process started it.
        self.popen: subprocess.Popen | None = None

    def call(self, method: str, *arguments: object) -> Any:
        """``supervisor.<method>(*arguments)`` over XML-RPC. NotRunning when nothing answers."""
        transport = SupervisorTransport(None, None, f"unix://{self.run_dir / 'supervisor.sock'}")
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

    def up(self, program: str, log: Path, pid: int = 0) -> int:
        """The pid of ``program``, starting or running (and still ``pid``, if given); if not,
        StackError saying how it exited, with the end of its ``log``."""
        info = self.call("getProcessInfo", program)
        if info["statename"] not in ("STARTING", "RUNNING") or pid and info["pid"] not in (0, pid):
            how = f"with status {info['exitstatus']} ({info['statename']}: {info['description']})"
            raise StackError(f"{program} exited {how}; {log} ends:\n{log_tail(log)}")
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
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.wait_procs([psutil.Process(pid)], timeout)[1]:
                raise StackError(f"supervisord (pid {pid}) still runs; see {self.log}")


class Stack:
    """nginx and N uWSGI instances (or uWSGI alone), run by supervisord. See the package's doc.

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
        self.supervisor = Supervisor(self.run_dir)

    @classmethod
    def attach(cls, run_dir: Path) -> Stack:
        """The stack running in ``run_dir``, to stop or reload it from another shell."""
        names = [info["name"] for info in Supervisor(run_dir).call("getAllProcessInfo")]
        instances = sum(name.startswith("uwsgi-") for name in names)
        nginx = find_nginx() if "nginx" in names else None
        return cls(StackSettings(run_dir=run_dir, uwsgi_instances=instances, nginx=nginx))

    @property
    def standalone(self) -> bool:
        return self.settings.nginx is None

    def nginx_config(self) -> NginxConfig:
        settings = self.settings
        harakiri = settings.uwsgi_options.get("harakiri") or os.environ.get("UWSGI_HARAKIRI")
        https = f"{settings.host}:{settings.https_port}" if settings.https_port else None
        return NginxConfig(
            **{knob.name: getattr(settings, knob.name) for knob in dataclasses.fields(NginxTuning)},
            conf_dir=self.nginx_dir,
            build_dir=self.build_dir,
            upstreams=[f"unix:{instance.socket}" for instance in self.instances],
            http_listen=f"{settings.host}:{settings.port}",
            https_listen=https,
            certificate=settings.certificate,
            certificate_key=settings.certificate_key,
            # Started as root, nginx would switch its workers to `nobody`, who can read neither
            # a build in the invoking user's tree (pytest's tmp dirs are 0700) nor connect to the
            # 0660 sockets. The local stack runs as whoever started it; production as www-data.
            user="root" if os.geteuid() == 0 else None,
            access_log=self.nginx_dir / "access.log" if settings.access_log else None,
            harakiri=int(harakiri or DEFAULT_HARAKIRI),
        )

    def nginx_command(self, *arguments: str) -> list[str]:
        prefix = f"{self.nginx_dir}/"
        files = ["-c", f"{prefix}nginx.conf", "-e", str(self.nginx_log)]
        return [str(self.settings.nginx), "-p", prefix, *files, *arguments]

    def check_nginx(self) -> None:
        checked = subprocess.run(self.nginx_command("-t", "-q"), capture_output=True, text=True)
        if checked.returncode != 0:
            raise StackError(f"nginx rejected its configuration:\n{checked.stderr.strip()}")

    def render(self) -> None:
        """Write nginx's config (checked by ``nginx -t``) and supervisord's into the run dir."""
        if not self.standalone:
            for sub in ("tmp", "cache"):
                (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
            render_nginx(self.nginx_config())
            self.check_nginx()
        render_supervisord(self)

    # -- the whole stack ---------------------------------------------------

    def start(self, *, show_log: bool = False) -> None:
        """Render the configs, start supervisord (its log on stdout too if ``show_log``) and
        wait until every uWSGI worker accepts and /health answers. On any failure, stop what
        started."""
        if self.settings.uwsgi is None:
            raise StackError("uWSGI is not installed (pip install uWSGI; ./scripts/serve does)")
        if self.standalone and len(self.instances) > 1:
            raise StackError("without nginx there is one uWSGI instance (it owns the HTTP port)")
        with contextlib.suppress(NotRunning):  # nothing answers: nothing is running
            pid = self.supervisor.call("getPID")
            raise StackError(f"a stack (pid {pid}) is already running in {self.run_dir}: stop it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.render()
        # The app's settings and the shared uWSGI options reach uWSGI through supervisord's
        # environment, never a file: uWSGI reads UWSGI_PROCESSES=2 as processes = 2.
        options = self.settings.uwsgi_options.items()
        uwsgi = {"UWSGI_" + name.upper().replace("-", "_"): value for name, value in options}
        try:
            # Never a daemon (--nodaemon) but in a session of its own: it outlives this process,
            # and a Ctrl-C in the terminal reaches scripts/serve only, which shuts it down in order.
            command = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c"]
            self.supervisor.popen = subprocess.Popen(
                [*command, str(self.supervisor.config)],
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
        """Stop nginx, then each uWSGI instance, gracefully (killed after ``stop_timeout``);
        then remove what they leave (a uWSGI master's FIFO, the sockets of a killed one)."""
        programs = len(self.instances) + (0 if self.standalone else 1)
        self.supervisor.shutdown(self.settings.stop_timeout * programs + 10)
        for instance in self.instances:
            instance.remove_files()
        # `nginx -t` writes an empty pid file, which an nginx that never ran to a clean exit
        # (a busy port) leaves behind; supervisord and its nginx are gone by now.
        (self.nginx_dir / "nginx.pid").unlink(missing_ok=True)

    def leftovers(self) -> list[Path]:
        """Sockets, FIFOs and pid files in the run directory: none once the stack stopped."""
        return [p for p in self.run_dir.rglob("*") if p.suffix in (".sock", ".fifo", ".pid")]

    def pids(self) -> dict[str, int]:
        """The pid of every running program, by name: ``uwsgi-1`` ... and ``nginx``."""
        return self.supervisor.pids()

    def wait(self, program: str, log: Path, ready: Callable[[], bool]) -> None:
        """Until ``ready()``; StackError if ``program`` exits (or is restarted) meanwhile, or
        after ``start_timeout``, with the end of its ``log``."""
        pid, deadline = 0, time.monotonic() + self.settings.start_timeout
        while True:
            try:
                pid = self.supervisor.up(program, log, pid)
                if ready():
                    return
            except NotRunning:
                pass  # supervisord is not listening yet
            if time.monotonic() > deadline:
                raise StackError(f"{program} not ready; {log} ends:\n{log_tail(log)}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """/health answers: 200, or 503 when the database is down (the stack is up)."""
        try:
            urllib.request.urlopen(self.settings.url + "/health", timeout=5).close()
        except urllib.error.HTTPError as error:
            return error.code == 503
        except OSError:
            return False
        return True

    # -- one program at a time ---------------------------------------------

    def stop_uwsgi(self, *instances: UwsgiInstance) -> None:
        """Stop these instances gracefully (``supervisorctl stop uwsgi:uwsgi-1``)."""
        for instance in instances:
            self.supervisor.call("stopProcess", instance.program)

    def start_uwsgi(self, instance: UwsgiInstance) -> None:
        """Start a stopped instance and wait until its workers accept."""
        self.supervisor.call("startProcess", instance.program)
        self.wait(instance.program, instance.log, instance.ready)

    def reload(self, *, chain: bool = False) -> None:
        """Reload every uWSGI instance in turn, the next once the previous serves again; then nginx.

        The default is uWSGI's graceful reload (``r`` to the master FIFO, as SIGHUP): the master
        waits for running requests, re-execs itself with the new code, keeps its socket (requests
        wait in its backlog, or go to the other instances) and forks new workers. ``chain``
        (``c``) replaces the workers one at a time from the loaded app: no pause, but no new code
        without ``lazy-apps`` (deploy/README.md).
        """
        for instance in self.instances:
            self.reload_uwsgi(instance, chain=chain)
        if not self.standalone:
            self.reload_nginx()

    def reload_uwsgi(self, instance: UwsgiInstance, *, chain: bool = False) -> None:
        old = instance.worker_pids()
        instance.command("c" if chain else "r")
        self.wait(instance.program, instance.log, lambda: instance.ready(not_pids=old))

    def reload_nginx(self) -> None:
        """``nginx -t``, then a graceful reload (it reads a new build's episodes.map); returns
        once the old workers have finished their requests and exited."""
        self.check_nginx()
        old_workers = psutil.Process(self.supervisor.up("nginx", self.nginx_log)).children()
        self.supervisor.call("signalProcess", "nginx", "HUP")
        if psutil.wait_procs(old_workers, timeout=self.settings.start_timeout)[1]:
            raise StackError(f"nginx's old workers are still running; see {self.nginx_log}")
