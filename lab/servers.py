"""The real stack for each configuration, through deploy.stack (the launcher scripts/serve uses).

    with LabStacks(experiments, Path("var/bench/x/work"), port=0, postgres_url=None) as stacks:
        stack = stacks.start(configuration.settings)    # nginx + uWSGI, answering
        stack.url("nginx"), stack.url("uwsgi")          # http://127.0.0.1:<port>
        stack.stop()

``LabStacks`` prepares what the experiments need once (a seeded SQLite file, a
seeded schema in PostgreSQL, a frozen build, a UDP socket for syslog) and
turns knob values into :class:`deploy.stack.StackSettings`: uWSGI options
(which deploy/uwsgi/uwsgi.ini reads as ``UWSGI_*`` variables), nginx template
settings, and the app's environment. The config files are never copied: a
knob left unset keeps what deploy/ says.

For ``request.via = "uwsgi"`` uWSGI also listens on an HTTP socket, answering
with ``Connection: close`` so wrk reconnects cleanly instead of counting each
closed connection as a read error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from deploy.stack import Stack, StackError, StackSettings
from deploy.stack.settings import find_nginx, find_uwsgi
from webapp import create_app
from webapp.db import get_database
from webapp.db.backends import DatabaseUnavailable, redact_url
from webapp.db.seed import seed
from webapp.freeze import FreezeError, freeze

from .app_cpu import process_tree_cpu_seconds
from .experiment import Experiment
from .front import FrontedServer, ServerSpec
from .knobs import DEPLOYED, process_count
from .memory import WorkerMemory, worker_memory
from .runner import LabError

#: Episodes in the lab's database: the site's default seed.
EPISODES = 600
#: The address the app builds its links from, live and frozen alike.
SITE_URL = "http://podcast.lab"
#: The PostgreSQL schema the lab seeds and reuses across runs.
POSTGRES_SCHEMA = "lab_bench"
PROFILER_SAMPLED_RATE = "0.01"
SITE_WSGI_MODULE = "webapp.wsgi:application"
LAB_WSGI_MODULE = "lab.wsgi:application"
#: The app.wsgi knob's other values: the module uWSGI runs instead of the site.
OTHER_WSGI_MODULES = {
    "hello": "lab.hello:application",
    "flask_hello": "lab.flask_hello:application",
}
#: app.profiler values that lab.wsgi installs (the others are request_profiler's settings).
LAB_PROFILERS = {"pyinstrument_recipe", "werkzeug"}


class ServerError(LabError):
    """The stack or its data could not be prepared or started."""


def settings_used(experiments: Sequence[Experiment], knob: str) -> set[Any]:
    return {c.settings[knob] for experiment in experiments for c in experiment.configurations}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(
                f"port {port} on 127.0.0.1 is in use: stop what holds it, or pick "
                f"another with --port (the lab needs it and the next one)"
            ) from None


class LabStack:
    """One started stack, and where to load it.

    :param stack: the running nginx and uWSGI (deploy/stack), or an app server behind the
        lab's minimal nginx.
    :param http_port: uWSGI's HTTP socket, for requests that skip nginx.
    :param running: the list of running stacks this one adds itself to, and leaves when
        stopped, so that :class:`LabStacks` stops whatever is left.
    """

    def __init__(
        self, stack: Stack | FrontedServer, http_port: int, running: list[LabStack]
    ) -> None:
        self.stack, self.http_port, self._running = stack, http_port, running
        running.append(self)

    def url(self, via: str) -> str:
        if isinstance(self.stack, FrontedServer):
            return self.stack.url(via)
        return self.stack.settings.url if via == "nginx" else f"http://127.0.0.1:{self.http_port}"

    def worker_memory(self) -> list[WorkerMemory]:
        """The app server's workers' memory (uWSGI's first instance under deploy/stack)."""
        if isinstance(self.stack, FrontedServer):
            return self.stack.worker_memory()
        return worker_memory(self.stack.pids()["uwsgi-1"])

    def app_cpu_seconds(self) -> float:
        """CPU seconds the app server has used so far (every uWSGI instance under
        deploy/stack: master, workers, reaped workers)."""
        if isinstance(self.stack, FrontedServer):
            return self.stack.app_cpu_seconds()
        return sum(
            process_tree_cpu_seconds(pid)
            for name, pid in self.stack.pids().items()
            if name.startswith("uwsgi-")
        )

    def stop(self) -> None:
        self.stack.stop()
        if self in self._running:
            self._running.remove(self)


class LabStacks:
    """Prepares the experiments' data once; starts a stack per configuration. A context manager.

    :param experiments: what will be measured: it decides the data to prepare (a
        PostgreSQL schema, a frozen build, a syslog socket) only if some configuration needs it.
    :param workdir: where the data, the build and each stack's files go.
    :param port: nginx's port, uWSGI's HTTP socket on the next one; 0 for free ports.
    :param postgres_url: a database the lab may create its schema in; needed only by
        configurations with ``app.database = "postgresql"``.
    """

    def __init__(
        self,
        experiments: Sequence[Experiment],
        workdir: Path,
        *,
        port: int = 0,
        postgres_url: str | None = None,
    ) -> None:
        self.experiments = experiments
        self.workdir = Path(os.path.abspath(workdir))
        self.fixed_port = port
        self.postgres_url = postgres_url
        self.cpus = os.cpu_count() or 1
        self.database_urls: dict[str, str] = {}
        self.build_dir = self.workdir / "build"
        self.no_build_dir = self.workdir / "no-build"
        self.syslog: socket.socket | None = None
        self.running: list[LabStack] = []
        self.nginx = find_nginx()
        self.uwsgi = find_uwsgi()

    def __enter__(self) -> LabStacks:
        if self.nginx is None:
            raise ServerError("nginx is not installed (apt-get install nginx)")
        if self.uwsgi is None:
            raise ServerError("uWSGI is not installed in this environment (pip install uWSGI)")
        if self.fixed_port:
            for port in (self.fixed_port, self.fixed_port + 1):
                check_port_free(port)
        try:
            self._prepare()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stack in self.running:
            stack.stop()
        self.running.clear()
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None
        self._forget_lab_profiles()

    @property
    def lab_profiles(self) -> Path:
        """Where the profilers lab.wsgi installs write (Werkzeug's: a file per request)."""
        return self.workdir / "lab-profiles"

    def _forget_lab_profiles(self) -> None:
        # Werkzeug never prunes them and nothing reads them, and a full profiler experiment
        # leaves many (commit aa99713 says how much). Emptied before each stack, too, so that
        # every round of Werkzeug's starts from an empty directory, not the rounds before it.
        shutil.rmtree(self.lab_profiles, ignore_errors=True)

    # -- data --------------------------------------------------------------

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_urls["sqlite"] = f"sqlite:///{self.workdir}/lab.sqlite3"
        if "postgresql" in settings_used(self.experiments, "app.database"):
            self.database_urls["postgresql"] = self._postgres_schema_url()
        for url in self.database_urls.values():
            self._seed(url)
        if True in settings_used(self.experiments, "app.frozen"):
            self._freeze()
        if "syslog-udp" in settings_used(self.experiments, "uwsgi.logging"):
            # A syslog server that reads nothing: the kernel drops what overflows, as UDP allows;
            # what is measured is uWSGI's cost of sending.
            self.syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.syslog.bind(("127.0.0.1", 0))

    def _app(self, database_url: str):
        return create_app(
            {
                "DATABASE_URL": database_url,
                "SITE_URL": SITE_URL,
                "VAR_DIR": str(self.workdir / "var"),
            }
        )

    def _postgres_schema_url(self) -> str:
        if not self.postgres_url:
            raise ServerError(
                'an experiment uses app.database = "postgresql": pass --postgres-url or set '
                "BENCH_DATABASE_URL to a database the lab may create a schema in"
            )
        import psycopg2  # only when PostgreSQL is measured

        try:
            with (
                psycopg2.connect(self.postgres_url, connect_timeout=5) as connection,
                connection.cursor() as cursor,
            ):
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}")
        except psycopg2.Error as error:
            reason = str(error).strip().splitlines()[0]
            raise ServerError(f"PostgreSQL at {redact_url(self.postgres_url)}: {reason}") from None
        separator = "&" if urlsplit(self.postgres_url).query else "?"
        return (
            self.postgres_url
            + separator
            + "options="
            + quote(f"-c search_path={POSTGRES_SCHEMA}", safe="")
        )

    def _seed(self, database_url: str) -> None:
        app = self._app(database_url)
        database = get_database(app)
        try:
            database.init_schema()
            with database.session() as session:
                seed(session, EPISODES)
        except DatabaseUnavailable as error:
            raise ServerError(
                f"cannot prepare the lab's data in {redact_url(database_url)}: {error}"
            ) from None
        finally:
            database.close()

    def _freeze(self) -> None:
        app = self._app(self.database_urls["sqlite"])
        try:
            freeze(app, self.build_dir)
        except FreezeError as error:
            raise ServerError(
                f"freezing the site for the frozen configurations failed: {error}"
            ) from None
        finally:
            get_database(app).close()

    # -- stacks -------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        assert self.nginx and self.uwsgi, "__enter__ checked both are installed"

        def first_line(command: list[str]) -> str:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout + done.stderr).strip().splitlines()[0]

        return {
            "nginx": first_line([self.nginx, "-v"]),
            "uWSGI": first_line([self.uwsgi, "--version"]),
        }

    def uwsgi_options(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """uWSGI options for the uwsgi.* knobs that are set (the rest keep uwsgi.ini's)."""
        uwsgi = {}
        if settings["uwsgi.processes"] is not DEPLOYED:
            uwsgi["processes"] = str(process_count(settings["uwsgi.processes"], self.cpus))
        for knob, option in (
            ("uwsgi.threads", "threads"),
            ("uwsgi.max_requests", "max-requests"),
            ("uwsgi.max_worker_lifetime", "max-worker-lifetime"),
        ):
            if settings[knob] is not DEPLOYED:
                uwsgi[option] = str(settings[knob])
        if settings["uwsgi.lazy_apps"] is not DEPLOYED:
            uwsgi["lazy-apps"] = "true" if settings["uwsgi.lazy_apps"] else "false"
        logging = settings["uwsgi.logging"]
        if logging is not DEPLOYED:
            uwsgi["disable-logging"] = "true" if logging == "off" else "false"
        if logging == "syslog-udp":
            assert self.syslog is not None
            host, port_ = self.syslog.getsockname()
            uwsgi["req-logger"] = f"rsyslog:{host}:{port_},podcast-uwsgi"
        return uwsgi

    def app(self, settings: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """The WSGI callable for a configuration's app.* knobs, and the environment it reads."""
        module = SITE_WSGI_MODULE
        environment = {
            "DATABASE_URL": self.database_urls[settings["app.database"]],
            "SITE_URL": SITE_URL,
            "VAR_DIR": str(self.workdir / "var"),
            "PROFILER_DIR": str(self.workdir / "profiles"),
        }
        if settings["app.gc_freeze"] is not DEPLOYED:
            environment["GC_FREEZE"] = "1" if settings["app.gc_freeze"] else "0"
        profiler = settings["app.profiler"]
        if profiler in LAB_PROFILERS:
            # Another profiler in place of request_profiler, wrapped around the app by lab.wsgi.
            module = LAB_WSGI_MODULE
            environment["LAB_PROFILER"] = profiler
            environment["LAB_PROFILE_DIR"] = str(self.lab_profiles)
        elif profiler != "none":
            environment["PROFILER_SECRET"] = uuid.uuid4().hex
            environment["PROFILER_SAMPLE_RATE"] = {
                "off": "0",
                "sampled": PROFILER_SAMPLED_RATE,
                "on": "1",
            }[profiler]
        if settings["app.feed"] != "cached":
            module = LAB_WSGI_MODULE
            environment["LAB_FEED"] = settings["app.feed"]
        if settings["app.wsgi"] != "site":
            module = OTHER_WSGI_MODULES[settings["app.wsgi"]]
        return module, environment

    def stack_settings(
        self, settings: Mapping[str, Any], port: int, http_port: int
    ) -> StackSettings:
        """The launcher's settings for one configuration's knobs."""
        uwsgi = {"http-socket": f"127.0.0.1:{http_port}", "add-header": "Connection: close"}
        uwsgi.update(self.uwsgi_options(settings))
        module, environment = self.app(settings)
        if module != SITE_WSGI_MODULE:
            uwsgi["module"] = module

        stack_settings = StackSettings(
            run_dir=self.workdir / "run",
            build_dir=self.build_dir if settings["app.frozen"] else self.no_build_dir,
            port=port,
            uwsgi_options=uwsgi,
            environment=environment,
            nginx=self.nginx,
            uwsgi=self.uwsgi,
        )
        if settings["nginx.access_log"] is not DEPLOYED:
            stack_settings.nginx_options["access_log"] = (
                settings["nginx.access_log"] and "access.log"
            )
        if settings["nginx.worker_processes"] is not DEPLOYED:
            stack_settings.nginx_options["worker_processes"] = str(
                process_count(settings["nginx.worker_processes"], self.cpus)
            )
        for knob in ("microcache", "gzip", "open_file_cache", "worker_connections"):
            if settings[f"nginx.{knob}"] is not DEPLOYED:
                stack_settings.nginx_options[knob] = settings[f"nginx.{knob}"]
        return stack_settings

    def server_spec(self, settings: Mapping[str, Any], port: int, app_port: int) -> ServerSpec:
        """What to run behind the lab's minimal nginx for ``app.server`` uwsgi/gunicorn/granian.

        Each gets as many workers as uWSGI would: deploy/uwsgi's one per CPU unless
        ``uwsgi.processes`` says otherwise (for uWSGI only).
        """
        module, environment = self.app(settings)
        options = self.uwsgi_options(settings)
        workers = int(options.pop("processes", self.cpus))
        return ServerSpec(
            server=settings["app.server"],
            module=module,
            workers=workers,
            run_dir=self.workdir / "front",
            port=port,
            app_port=app_port,
            environment=environment,
            uwsgi_options=options,
        )

    def start(self, settings: Mapping[str, Any]) -> LabStack:
        """Start nginx and uWSGI for ``settings``; wait until they answer, or raise ServerError."""
        if self.fixed_port:
            port, http_port = self.fixed_port, self.fixed_port + 1
        else:
            port, http_port = free_port(), free_port()
        for number in (port, http_port):
            check_port_free(number)
        self._forget_lab_profiles()
        if settings["app.server"] != "stack":
            assert self.nginx is not None, "__enter__ checked it is installed"
            front = FrontedServer(
                self.server_spec(settings, port, http_port), self.nginx, self.uwsgi
            )
            try:
                front.start()  # stops whatever it started if it fails
            except LabError as error:
                raise ServerError(f"{settings['app.server']} did not start: {error}") from None
            return LabStack(front, http_port, self.running)
        stack = Stack(self.stack_settings(settings, port, http_port))
        try:
            stack.start()  # stops whatever it started if it fails
        except StackError as error:
            raise ServerError(f"the stack did not start: {error}") from None
        return LabStack(stack, http_port, self.running)
