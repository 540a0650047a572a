""":class:`Stack`: nginx in front of N uWSGI instances, the programs of one supervisord."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path

import psutil

from .render import NginxConfig, render_nginx, render_supervisord
from .settings import (
    DEFAULT_HARAKIRI,
    PROJECT_ROOT,
    READ_TIMEOUT_MARGIN,
    UWSGI_INI,
    StackError,
    StackSettings,
    find_nginx,
)
from .supervise import NotRunning, Program, Supervisor, log_tail
from .uwsgi import UwsgiInstance


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    """Until ``check()`` is true (NotRunning counts as not yet); StackError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(NotRunning):
            if check():
                return
        if time.monotonic() > deadline:
            raise StackError(f"{what} after {timeout:.0f} s; {log} ends:\n{log_tail(log)}")
        time.sleep(0.05)


class Stack:
    """nginx and N uWSGI instances (or uWSGI alone), run by supervisord. See the package's doc.

    :param settings: how to run it; the defaults are ``scripts/serve``'s.
    """

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.run_dir = Path(os.path.abspath(self.settings.run_dir))
        count = self.settings.uwsgi_instances
        self.instances = [UwsgiInstance(n, self.run_dir) for n in range(1, count + 1)]
        self.nginx_dir = self.run_dir / "nginx"
        self.nginx_program = Program("nginx", "nginx", self.nginx_dir / "error.log")
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
        user = None
        if os.geteuid() == 0:
            # Started as root, nginx would switch its workers to `nobody`, who can read neither
            # a build in the invoking user's tree (pytest's tmp dirs are 0700) nor connect to the
            # 0660 sockets. The local stack runs as whoever started it; production as www-data.
            user = f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"
        return NginxConfig(
            conf_dir=self.nginx_dir,
            build_dir=Path(os.path.abspath(settings.build_dir)),
            upstreams=[f"unix:{instance.socket}" for instance in self.instances],
            http_listen=f"{settings.host}:{settings.port}",
            https_listen=f"{settings.host}:{settings.https_port}" if settings.https_port else None,
            certificate=settings.certificate,
            certificate_key=settings.certificate_key,
            user=user,
            worker_processes=settings.worker_processes,
            worker_connections=settings.worker_connections,
            open_file_cache=settings.open_file_cache,
            open_file_cache_valid=settings.open_file_cache_valid,
            gzip=settings.gzip,
            access_log=self.nginx_dir / "access.log" if settings.access_log else None,
            uwsgi_read_timeout=int(harakiri or DEFAULT_HARAKIRI) + READ_TIMEOUT_MARGIN,
            microcache=settings.microcache,
            api_rate_limit=settings.api_rate_limit,
        )

    def environment(self) -> dict[str, str]:
        """supervisord's, which uWSGI inherits: ours, the app's settings, the shared ``UWSGI_*``
        options; and without nginx, uWSGI's own HTTP server and static files."""
        settings, options = self.settings, {}
        for name, value in settings.uwsgi_options.items():
            options["UWSGI_" + name.upper().replace("-", "_")] = str(value)
        if self.standalone:
            options.update(
                UWSGI_HTTP_SOCKET=f"{settings.host}:{settings.port}",
                UWSGI_CHECK_STATIC=os.path.abspath(settings.build_dir),
                UWSGI_STATIC_INDEX="index.html",
                UWSGI_STATIC_GZIP_ALL="true",
                UWSGI_OFFLOAD_THREADS="1",
            )
        return {**os.environ, **settings.environment, **options}

    def _nginx(self, *arguments: str) -> list[str]:
        assert self.settings.nginx is not None
        prefix, conf, log = (
            f"{self.nginx_dir}/",
            self.nginx_dir / "nginx.conf",
            self.nginx_program.log,
        )
        return [self.settings.nginx, "-p", prefix, "-c", str(conf), "-e", str(log), *arguments]

    def _check_nginx(self) -> None:
        checked = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if checked.returncode != 0:
            raise StackError(f"nginx rejected its configuration:\n{checked.stderr.strip()}")

    def render(self) -> None:
        """Write nginx's config (checked by ``nginx -t``) and supervisord's into the run dir."""
        if not self.standalone:
            for sub in ("tmp", "cache"):
                (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
            render_nginx(self.nginx_config())
            self._check_nginx()
        settings = self.settings
        uwsgi = [settings.uwsgi, "--ini", UWSGI_INI]
        nginx = self._nginx("-g", "daemon off;") if not self.standalone else None
        render_supervisord(
            self.supervisor.config,
            run_dir=self.run_dir,
            user=pwd.getpwuid(os.getuid()).pw_name,
            identifier=f"podcast stack at {settings.url} {settings.https_url or ''}".strip(),
            directory=PROJECT_ROOT,
            stop_timeout=round(settings.stop_timeout),
            uwsgi=[dict(vars(i), command=uwsgi, environment=i.options()) for i in self.instances],
            nginx=None
            if nginx is None
            else {"command": nginx, "log": self.nginx_dir / "stderr.log"},
        )

    # -- the whole stack ---------------------------------------------------

    def start(self, *, detach: bool = False, show_log: bool = False) -> None:
        """Render the configs, start supervisord (a daemon if ``detach``; its log on stdout too
        if ``show_log``) and wait until the site answers. On any failure, stop what started."""
        if self.settings.uwsgi is None:
            raise StackError("uWSGI is not installed (pip install uWSGI; ./scripts/serve does)")
        if self.standalone and len(self.instances) > 1:
            raise StackError("without nginx there is one uWSGI instance (it owns the HTTP port)")
        if self.supervisor.running():
            raise StackError(f"a stack is already running in {self.run_dir}: stop it first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.render()
        output = None if show_log else subprocess.DEVNULL
        try:
            self.supervisor.start(self.environment(), detach=detach, output=output)
            for instance in self.instances:
                self._wait_ready(instance)
            self._wait_site()
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

    def leftovers(self) -> list[Path]:
        """Sockets, FIFOs and pid files in the run directory: none once the stack stopped."""
        return [p for p in self.run_dir.rglob("*") if p.suffix in (".sock", ".fifo", ".pid")]

    def pids(self) -> dict[str, int]:
        """The pid of every running program, by name: ``uwsgi-1`` ... and ``nginx``."""
        return self.supervisor.pids()

    def _wait_ready(self, instance: UwsgiInstance, not_pids: Collection[int] = ()) -> None:
        """Until every worker accepts (none of ``not_pids``); StackError if the master exits."""
        master = 0

        def ready() -> bool:
            nonlocal master
            master = self.supervisor.up(instance.program, master)
            return instance.ready(not_pids=not_pids)

        wait_for(
            ready, self.settings.start_timeout, f"{instance.program.what} not ready", instance.log
        )

    def _wait_site(self) -> None:
        """Until /health answers: 200, or 503 when the database is down (the stack is up)."""
        front = self.instances[0].program if self.standalone else self.nginx_program

        def answers() -> bool:
            self.supervisor.up(front)
            try:
                with urllib.request.urlopen(self.settings.url + "/health", timeout=5):
                    return True
            except urllib.error.HTTPError as error:
                return error.code == 503
            except OSError:
                return False

        wait_for(answers, self.settings.start_timeout, "/health not answering", front.log)

    # -- one program at a time ---------------------------------------------

    def stop_uwsgi(self, *instances: UwsgiInstance) -> None:
        """Stop these instances gracefully (``supervisorctl stop uwsgi:uwsgi-1``)."""
        for instance in instances:
            self.supervisor.call("stopProcess", instance.program.name)

    def start_uwsgi(self, instance: UwsgiInstance) -> None:
        """Start a stopped instance and wait until its workers accept."""
        self.supervisor.call("startProcess", instance.program.name)
        self._wait_ready(instance)

    def reload(self, *, chain: bool = False) -> None:
        """Reload every uWSGI instance in turn, the next once the previous serves again; then nginx.

        The default is uWSGI's graceful reload (SIGHUP, ``supervisorctl signal HUP uwsgi:*``): the
        master waits for running requests, re-execs itself with the new code, keeps its socket
        (requests wait in its backlog, or go to the other instances) and forks new workers.
        ``chain`` (``c`` to the master FIFO: no signal does it) replaces the workers one at a time
        from the loaded app: no pause, but no new code without ``lazy-apps`` (deploy/README.md).
        """
        for instance in self.instances:
            self.reload_uwsgi(instance, chain=chain)
        if not self.standalone:
            self.reload_nginx()

    def reload_uwsgi(self, instance: UwsgiInstance, *, chain: bool = False) -> None:
        old = instance.worker_pids()
        if chain:
            instance.command("c")
        else:
            self.supervisor.call("signalProcess", instance.program.name, "HUP")
        self._wait_ready(instance, not_pids=old)

    def reload_nginx(self) -> None:
        """``nginx -t``, then a graceful reload (it reads a new build's episodes.map); returns
        once the old workers have finished their requests and exited."""
        self._check_nginx()
        old_workers = psutil.Process(self.supervisor.up(self.nginx_program)).children()
        self.supervisor.call("signalProcess", "nginx", "HUP")
        if psutil.wait_procs(old_workers, timeout=self.settings.start_timeout)[1]:
            raise StackError(f"nginx's old workers are still running; see {self.nginx_program.log}")
