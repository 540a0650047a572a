"""The same app under uWSGI, gunicorn or granian, behind one minimal nginx: the servers compared.

    front = FrontedServer(spec, nginx="/usr/sbin/nginx", uwsgi=".venv/bin/uwsgi")
    front.start()              # the app server, then nginx; waits until /health answers
    front.url("nginx")         # http://127.0.0.1:<port>
    front.worker_memory()      # each worker's RSS and private memory
    front.stop()               # both, gracefully, then killed if they linger

deploy/stack's nginx speaks only the uwsgi protocol, and carries the site's micro-cache,
headers and frozen files; to compare application servers, each gets the same nginx with one
location that hands every request over: ``uwsgi_pass`` to uWSGI's unix socket as shipped
(deploy/uwsgi/uwsgi.ini, unchanged), ``proxy_pass`` over HTTP/TCP to gunicorn and granian.
Neither side keeps upstream connections alive, as nginx does towards uWSGI in production.
Processes are started in their own session and stopped by their pid, never by name.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from jinja2 import FileSystemLoader

from deploy.stack.render import TEMPLATES
from deploy.stack.settings import DEPLOY_DIR, PROJECT_ROOT, UWSGI_INI
from deploy.stack.uwsgi import uwsgi_environment

from .app_cpu import process_tree_cpu_seconds
from .memory import WorkerMemory, worker_memory
from .runner import LabError

#: Seconds to come up (the app imports, the workers fork) and to stop gracefully.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: How to get the servers that are not a dependency of the site.
INSTALL_HINT = "pip install -e '.[lab]' (scripts/bench installs the lab extra)"
#: deploy/stack's settings for config files (no HTML escaping, an unknown name is an error),
#: with the lab's own templates.
_TEMPLATES = TEMPLATES.overlay(loader=FileSystemLoader(Path(__file__).parent))


def installed(server: str) -> bool:
    """Whether ``server`` (gunicorn, granian) is importable by this Python."""
    import importlib.util

    return importlib.util.find_spec(server) is not None


@dataclass
class ServerSpec:
    """What to run behind the minimal nginx.

    :param server: "uwsgi", "gunicorn" or "granian".
    :param module: the WSGI callable, ``package.module:name``.
    :param workers: worker processes.
    :param run_dir: where the config, sockets and logs go (created).
    :param port: nginx's port.
    :param app_port: gunicorn's or granian's port (uWSGI listens on a unix socket).
    :param environment: the app's settings, on top of this process's environment.
    :param uwsgi_options: uWSGI options over deploy/uwsgi/uwsgi.ini (``{"processes": "4"}``).
    """

    server: str
    module: str
    workers: int
    run_dir: Path
    port: int
    app_port: int
    environment: Mapping[str, str] = field(default_factory=dict)
    uwsgi_options: Mapping[str, str] = field(default_factory=dict)


class _Process:
    """A child in its own session, its output in ``log``; stopped by pid."""

    def __init__(self, name: str, command: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_running(self) -> None:
        status = self.popen.poll()
        if status is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise LabError(f"{self.name} exited with status {status}; {self.log} ends:\n{tail}")

    def stop(self, signum: int) -> None:
        """``signum`` to the process; after STOP_TIMEOUT its whole session is killed."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Workers a master left behind share its session (process group): by its id, not a name.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()


class FrontedServer:
    """One app server behind the lab's minimal nginx; implements the runner's RunningStack.

    :param spec: what to run.
    :param nginx: the nginx binary.
    :param uwsgi: the uWSGI binary (for ``spec.server == "uwsgi"``).
    """

    def __init__(self, spec: ServerSpec, nginx: str, uwsgi: str | None) -> None:
        self.spec, self.nginx, self.uwsgi = spec, nginx, uwsgi
        self.run_dir = Path(os.path.abspath(spec.run_dir))
        self.app: _Process | None = None
        self.front: _Process | None = None

    def url(self, via: str) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    def app_command(self) -> tuple[list[str], dict[str, str]]:
        """The app server's command line and the variables it adds to the environment."""
        spec = self.spec
        if spec.server == "uwsgi":
            if self.uwsgi is None:
                raise LabError("uWSGI is not installed in this environment (pip install uWSGI)")
            options = {
                "socket": str(self.run_dir / "uwsgi.sock"),
                "master-fifo": str(self.run_dir / "uwsgi.fifo"),
                "safe-pidfile": str(self.run_dir / "uwsgi.pid"),
                "stats": str(self.run_dir / "uwsgi-stats.sock"),
                "module": spec.module,
                "processes": str(spec.workers),
                **spec.uwsgi_options,
            }
            return [self.uwsgi, "--ini", str(UWSGI_INI)], uwsgi_environment(options)
        bind = f"127.0.0.1:{spec.app_port}"
        if spec.server == "gunicorn":
            # Its defaults but the worker count: sync workers, no preload, no access log.
            command = ["-m", "gunicorn", "--workers", str(spec.workers), "--bind", bind]
            return [sys.executable, *command, spec.module], {}
        if spec.server == "granian":
            command = [
                "-m",
                "granian",
                "--interface",
                "wsgi",
                "--workers",
                str(spec.workers),
                "--blocking-threads",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(spec.app_port),
            ]
            return [sys.executable, *command, spec.module], {}
        raise LabError(f"unknown app server {spec.server!r}")

    def nginx_conf(self) -> str:
        """front.conf.j2 for this server: its upstream, and uwsgi_pass or proxy_pass."""
        uwsgi = self.spec.server == "uwsgi"
        user = None
        if os.geteuid() == 0:
            user = f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"
        return _TEMPLATES.get_template("front.conf.j2").render(
            user=user,
            run_dir=self.run_dir,
            port=self.spec.port,
            uwsgi=uwsgi,
            upstream=f"unix:{self.run_dir / 'uwsgi.sock'}"
            if uwsgi
            else f"127.0.0.1:{self.spec.app_port}",
            uwsgi_params=DEPLOY_DIR / "nginx" / "uwsgi_params",
        )

    def start(self) -> None:
        """Start the app server and nginx; wait until /health answers 200 through nginx.

        On any failure everything started is stopped and LabError says why.
        """
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(self.nginx_conf())
        command, variables = self.app_command()
        try:
            environment = {**os.environ, **self.spec.environment, **variables}
            self.app = _Process(
                self.spec.server, command, self.run_dir / f"{self.spec.server}.log", environment
            )
            nginx = [self.nginx, "-p", f"{self.run_dir}/", "-c", str(conf), "-e", "stderr"]
            self.front = _Process(
                "nginx", [*nginx, "-g", "daemon off;"], self.run_dir / "nginx.log", os.environ
            )
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        """Until /health answers 200 and the master has forked all its workers (gunicorn
        starts them one after the other: the first may answer before the last exists)."""
        assert self.app is not None and self.front is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.app.check_running()
            self.front.check_running()
            try:
                with urllib.request.urlopen(self.url("nginx") + "/health", timeout=5) as response:
                    if response.status == 200 and self._workers() >= self.spec.workers:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LabError(
                    f"{self.spec.server} behind nginx did not answer /health after "
                    f"{START_TIMEOUT:.0f} s; see {self.app.log}"
                )
            time.sleep(0.1)

    def _workers(self) -> int:
        assert self.app is not None
        try:
            return len(psutil.Process(self.app.pid).children())
        except psutil.NoSuchProcess:
            return 0

    def worker_memory(self) -> list[WorkerMemory]:
        return worker_memory(self.app.pid) if self.app else []

    def app_cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.app.pid) if self.app else 0.0

    def stop(self) -> None:
        """nginx, then the app server, gracefully (SIGQUIT, SIGTERM); killed after a timeout."""
        if self.front is not None:
            self.front.stop(signal.SIGQUIT)
            self.front = None
        if self.app is not None:
            self.app.stop(signal.SIGTERM)
            self.app = None
