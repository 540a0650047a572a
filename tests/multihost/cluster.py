"""deploy/README.md's scale-out shape, built on one machine: every host a network namespace.

    client .2 ──▶ nginx .10:80 ──┬─▶ app1 .11:3031 ─┐
                  (frozen build, ├─▶ app2 .12:3031 ─┼─▶ db .20:6432 PgBouncer ──▶ PostgreSQL
                  from app1)     └─▶ app3 .13:3031 ─┘                           (127.0.0.1 there)

    (10.77.0.x, inside the test's namespaces only)

Each step is the documented one, with the shipped files:

1. PostgreSQL (a private cluster: the tests restart it) allows MAX_CONNECTIONS, of which
   SUPERUSER_RESERVED are kept for superusers; PgBouncer runs deploy/pgbouncer/pgbouncer.ini
   with this machine's addresses and paths and a pool of POOL_SIZE server connections.
2. The schema and the episodes come from ``flask init-db`` and ``flask seed`` on app1,
   through PgBouncer, as a deploy runs them.
3. Each app host runs deploy/uwsgi/uwsgi.ini with ``UWSGI_SOCKET=<its address>:3031``, in a
   UTS namespace of its own too, so its host name (app1, app2, app3) is its own: the
   profiles say which host served them. DATABASE_URL and PROFILER_STORE point at PgBouncer.
4. app1 freezes the site (``flask freeze``) and serves its var/ read-only with an rsync
   daemon; the nginx host runs ``flask pull-build rsync://10.77.0.11/podcast/build``.
5. The nginx host's config comes from ``python -m deploy.stack render`` of production.toml with
   the three app hosts, HTTP only (TLS would end in front of it).

``Cluster.stop()`` stops everything by pid, then deletes the namespaces, killing by pid
whatever is still in them: it runs whatever failed before it.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from deploy.stack.settings import DEPLOY_DIR, PROJECT_ROOT, UWSGI_INI
from deploy.stack.stack import log_tail
from deploy.stack.uwsgi import UwsgiInstance
from tests.stack.conftest import EPISODES as STACK_EPISODES
from tests.stack.support import BackgroundLoad, PrivatePostgres, get, wait_until

from .network import Host, Network

SUBNET = "10.77.0"
APP_HOSTS = ("app1", "app2", "app3")
#: Ports inside the test's own namespaces, where nothing else listens: the documented ones.
UWSGI_PORT = 3031
PGBOUNCER_PORT = 6432
HTTP_PORT = 80
RSYNC_PORT = 873
#: uWSGI processes per app host: the CPU count of a 2-core app server (uwsgi.ini's %k).
PROCESSES = 2
#: PostgreSQL's budget: 6 connections, 2 of them for superusers (the test's own checks),
#: so 4 for the app's role, while 3 app hosts × 2 processes × (DATABASE_POOL_SIZE 4 + 1 for
#: the profile store) = 30 client connections may reach PgBouncer.
MAX_CONNECTIONS = 6
SUPERUSER_RESERVED = 2
POOL_SIZE = 3
#: As many as the stack tests' site: their varied_path asks for episodes 1 to EPISODES.
EPISODES = STACK_EPISODES
SITE_URL = "https://podcast.test"
PROFILER_SECRET = "multihost-profiler-secret-of-32-bytes-at-least"


def address(name: str) -> str:
    return {
        "client": f"{SUBNET}.2",
        "nginx": f"{SUBNET}.10",
        "db": f"{SUBNET}.20",
        **{app: f"{SUBNET}.{11 + n}" for n, app in enumerate(APP_HOSTS)},
    }[name]


class NamespacedLoad(BackgroundLoad):
    """BackgroundLoad whose client threads run inside ``host``'s network namespace."""

    def __init__(self, network: Network, host: Host, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._network, self._host = network, host

    def _run(self) -> None:
        with self._network.entered(self._host):
            super()._run()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def child_pids(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children() if pid_alive(child.pid)]
    except psutil.NoSuchProcess:
        return []


def read_pid(path: Path, expect: str) -> int | None:
    """The pid in ``path`` if that process is alive and its name mentions ``expect``."""
    try:
        pid = int(path.read_text().strip())
        # A pid file outliving its process can name someone else's process: never signal that.
        alive = pid_alive(pid) and expect.lower() in " ".join(psutil.Process(pid).cmdline()).lower()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def wait_gone(pids: list[int], timeout: float, popen: subprocess.Popen | None = None) -> bool:
    """Wait until every pid has exited; reaps ``popen`` (our own child) on the way."""

    def gone() -> bool:
        if popen is not None:
            popen.poll()
        return not any(pid_alive(pid) for pid in pids)

    return bool(wait_until(gone, timeout))


@dataclass
class AppHost:
    """One app server: uWSGI with deploy/uwsgi/uwsgi.ini on <address>:3031."""

    host: Host
    root: Path
    environment: dict[str, str]
    instance: UwsgiInstance = field(init=False)
    popen: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        run_dir = self.root / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        # The stack's instance files: its FIFO, pid file and stats socket (unix sockets on the
        # shared file system) drive its reload and its stop.
        self.instance = UwsgiInstance(1, run_dir)

    @property
    def name(self) -> str:
        return self.host.name

    def uwsgi_environment(self) -> dict[str, str]:
        """What /etc/podcast/env and the systemd unit give uWSGI on an app server."""
        return {
            "UWSGI_MASTER_FIFO": str(self.instance.fifo),
            "UWSGI_STATS": str(self.instance.stats_socket),
            "UWSGI_SAFE_PIDFILE": str(self.instance.pid_file),
            "UWSGI_SOCKET": f"{self.host.address}:{UWSGI_PORT}",
            # The unit's podcast:www-data, here root's: it changes nothing for a TCP socket.
            "UWSGI_CHOWN_SOCKET": "root:root",
            "UWSGI_PROCESSES": str(PROCESSES),
        }

    def start(self, network: Network, uwsgi: str, timeout: float = 60) -> None:
        self.instance.remove_files()  # a SIGKILLed master removes none of them
        environment = {**os.environ, **self.environment, **self.uwsgi_environment()}
        # A UTS namespace of its own: hostname(1) there names this host only.
        command = [
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            self.name, uwsgi, "--ini", str(UWSGI_INI),
        ]  # fmt: skip
        self.popen = network.popen(
            self.host, command, env=environment, log=self.instance.log, cwd=PROJECT_ROOT
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60, not_pids: tuple[int, ...] = ()) -> None:
        popen = self.popen
        if not wait_until(
            lambda: (
                self.instance.ready(not_pids=not_pids)
                or (popen is not None and popen.poll() is not None)
            ),
            timeout,
        ) or not self.instance.ready(not_pids=not_pids):
            raise RuntimeError(
                f"{self.name} is not serving; its log:\n{log_tail(self.instance.log)}"
            )

    def reload(self) -> None:
        """`systemctl reload podcast-uwsgi@1`: the graceful reload, waited for."""
        old = tuple(self.instance.worker_pids())
        self.instance.command("r")
        self.wait_ready(60, not_pids=old)

    def master_pid(self) -> int | None:
        return read_pid(self.instance.pid_file, "uwsgi")

    def pids(self) -> list[int]:
        master = self.master_pid()
        return sorted([master, *self.instance.worker_pids()]) if master else []

    def requests_served(self, timeout: float = 10) -> int:
        """Requests this host's workers have served; 0 while nothing listens on its stats
        socket (not running). A stats server slow to answer (a loaded machine) is asked again
        until ``timeout``, never taken for 0: the next request would look served by this host,
        and a test would then look for what that request left under the wrong host's name."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return sum(worker["requests"] for worker in self.instance.stats()["workers"])
            except (FileNotFoundError, ConnectionRefusedError):
                return 0
            except (OSError, ValueError):  # timed out, or a cut-short answer
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """`systemctl stop`: a graceful stop (q), then SIGKILL for whatever is left."""
        pids = self.pids()
        if pids:
            self.instance.command("q")
            if not wait_gone(pids, 20, self.popen):
                for leftover in pids:
                    if pid_alive(leftover):
                        os.kill(leftover, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)


@dataclass
class NginxHost:
    """The nginx machine: the rendered production config, the pulled build."""

    host: Host
    root: Path
    nginx: str
    popen: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.root / "conf" / "nginx.conf"

    @property
    def build(self) -> Path:
        return self.root / "var" / "build"

    @property
    def pid_file(self) -> Path:
        return self.root / "nginx.pid"

    def render(self, network: Network, upstreams: list[str]) -> None:
        """deploy/README.md's command with this host's paths, then ``nginx -t`` on the host."""
        for directory in ("tmp", "cache", "log"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        values = tomllib.loads((DEPLOY_DIR / "nginx" / "production.toml").read_text())
        for name in ("https_listen", "certificate", "certificate_key"):  # TLS ends in front
            del values[name]
        values.update(
            https_only=False,
            build_dir=str(self.build),
            upstreams=upstreams,
            http_listen=f"{self.host.address}:{HTTP_PORT}",
            server_name="podcast.test",
            # The load comes from one client address on purpose: no per-address limit.
            api_rate_limit=0,
            connections_per_address=0,
            # Its workers read the build in pytest's 0700 directories; production: www-data.
            user="root",
            pid_file=str(self.pid_file),
            error_log=str(self.root / "log" / "error.log"),
            access_log=str(self.root / "log" / "access.log"),
            temp_dir=str(self.root / "tmp"),
            cache_dir=str(self.root / "cache"),
        )
        toml = self.root / "nginx.toml"
        toml.write_text("".join(f"{name} = {json.dumps(v)}\n" for name, v in values.items()))
        command = [sys.executable, "-m", "deploy.stack", "render", str(toml)]
        command += ["--out", str(self.conf.parent)]
        subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=60)
        network.run(self.host, [self.nginx, "-t", "-q", "-c", str(self.conf)])

    def start(self, network: Network) -> None:
        self.popen = network.popen(
            self.host,
            [self.nginx, "-c", str(self.conf), "-g", "daemon off;"],
            log=self.root / "log" / "stderr.log",
        )
        if not wait_until(lambda: self.master_pid() is not None, 10):
            raise RuntimeError(f"nginx did not start:\n{log_tail(self.root / 'log' / 'error.log')}")

    def master_pid(self) -> int | None:
        return read_pid(self.pid_file, "nginx")

    def reload(self) -> None:
        """`systemctl reload nginx`: SIGHUP, waited for until the old workers are gone."""
        pid = self.master_pid()
        assert pid is not None, "nginx is not running"
        old = child_pids(pid)
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: not set(child_pids(pid)) & set(old), 10)

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is not None:
            workers = child_pids(pid)
            os.kill(pid, signal.SIGQUIT)  # finish the requests in progress
            if not wait_gone([pid, *workers], 10, self.popen):
                for leftover in [pid, *workers]:
                    if pid_alive(leftover):
                        os.kill(leftover, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)


class Cluster:
    """Everything in the module docstring; ``start()`` builds it, ``stop()`` removes it all."""

    def __init__(self, root: Path, *, uwsgi: str, nginx: str, postgres_bindir: Path) -> None:
        self.root = root
        self.uwsgi = uwsgi
        self.password = secrets.token_urlsafe(18)
        Network.remove_stale()
        self.network = Network()
        try:
            self._add_hosts(root, nginx, postgres_bindir)
        except BaseException:
            self.network.destroy()
            raise
        self.url = f"http://{address('nginx')}:{HTTP_PORT}"

    def _add_hosts(self, root: Path, nginx: str, postgres_bindir: Path) -> None:
        self.client = self.network.add_host("client", address("client"))
        self.db = self.network.add_host("db", address("db"))
        self.nginx = NginxHost(
            self.network.add_host("nginx", address("nginx")), root / "nginx", nginx
        )
        self.postgres = PrivatePostgres(
            postgres_bindir,
            prefix=self.network.command(self.db, []),
            settings={
                "max_connections": str(MAX_CONNECTIONS),
                "superuser_reserved_connections": str(SUPERUSER_RESERVED),
            },
        )
        self.pgbouncer: subprocess.Popen | None = None
        self.rsync: subprocess.Popen | None = None
        url = f"postgresql://podcast:{self.password}@{address('db')}:{PGBOUNCER_PORT}/podcast"
        self.database_url = url
        self.apps = [
            AppHost(
                self.network.add_host(name, address(name)),
                root / name,
                {
                    "DATABASE_URL": url,
                    "PROFILER_STORE": url,
                    "PROFILER_SECRET": PROFILER_SECRET,
                    "SITE_URL": SITE_URL,
                    "VAR_DIR": str(root / name / "var"),
                },
            )
            for name in APP_HOSTS
        ]

    # -- building it -------------------------------------------------------------

    def start(self) -> None:
        self.postgres.init()
        self.postgres.psql(
            f"CREATE ROLE podcast LOGIN PASSWORD '{self.password}';"
            " ALTER DATABASE podcast OWNER TO podcast"
        )
        self.start_pgbouncer()
        app1 = self.apps[0]
        self.flask(app1, "init-db")
        self.flask(app1, "seed", "--episodes", str(EPISODES))
        for app in self.apps:
            app.start(self.network, self.uwsgi)
        self.freeze_on(app1)
        self.start_rsync_daemon(app1)
        self.pull_build(app1)
        self.nginx.render(self.network, [f"{app.host.address}:{UWSGI_PORT}" for app in self.apps])
        self.nginx.start(self.network)
        if not wait_until(lambda: self.get("/health")[0] == 200, 30):
            raise RuntimeError(
                f"the site does not answer:\n{log_tail(self.root / 'nginx' / 'log' / 'error.log')}"
            )

    def pgbouncer_ini(self) -> Path:
        """deploy/pgbouncer/pgbouncer.ini, with this machine's addresses, paths and budget."""
        directory = self.postgres.root / "pgbouncer"
        directory.mkdir(exist_ok=True)
        config = configparser.ConfigParser(
            delimiters=("=",), comment_prefixes=(";",), interpolation=None
        )
        config.read(DEPLOY_DIR / "pgbouncer" / "pgbouncer.ini")
        config["databases"]["podcast"] = f"host=127.0.0.1 port={self.postgres.port} dbname=podcast"
        config["pgbouncer"].update(
            listen_addr=address("db"),
            listen_port=str(PGBOUNCER_PORT),
            unix_socket_dir="",
            logfile=str(directory / "pgbouncer.log"),
            pidfile=str(directory / "pgbouncer.pid"),
            auth_file=str(directory / "userlist.txt"),
            default_pool_size=str(POOL_SIZE),
        )
        (directory / "userlist.txt").write_text(f'"podcast" "{self.password}"\n')
        ini = directory / "pgbouncer.ini"
        with open(ini, "w") as file:
            config.write(file)
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, "postgres", "postgres")
        return ini

    def start_pgbouncer(self) -> None:
        ini = self.pgbouncer_ini()
        # -u: PgBouncer refuses to run as root; it switches user itself, in the same process.
        self.pgbouncer = self.network.popen(
            self.db, ["pgbouncer", "-u", "postgres", str(ini)], log=ini.with_suffix(".out")
        )
        if not wait_until(lambda: self.reachable(address("db"), PGBOUNCER_PORT), 15):
            raise RuntimeError(f"PgBouncer does not listen:\n{log_tail(ini.with_suffix('.out'))}")

    def flask(self, app: AppHost, *arguments: str) -> str:
        """``flask --app webapp …`` on an app host, with its settings (a deploy's commands)."""
        environment = {**os.environ, **app.environment}
        command = [sys.executable, "-m", "flask", "--app", "webapp", *arguments]
        return self.network.run(app.host, command, env=environment)

    def freeze_on(self, app: AppHost) -> None:
        self.flask(app, "freeze")

    def start_rsync_daemon(self, app: AppHost) -> None:
        """app's var/ read-only to the nginx host: ``rsync://<app>/podcast/build`` is its build."""
        conf = app.root / "rsyncd.conf"
        conf.write_text(
            "use chroot = yes\n"
            "[podcast]\n"
            f"path = {app.root / 'var'}\n"
            "read only = yes\n"
            # The build is in pytest's 0700 directories; a real server would use ssh instead.
            "uid = root\ngid = root\n"
            f"hosts allow = {address('nginx')}\n"
        )
        self.rsync = self.network.popen(
            app.host,
            ["rsync", "--daemon", "--no-detach", f"--config={conf}",
             f"--address={app.host.address}", f"--port={RSYNC_PORT}"],
            log=app.root / "rsyncd.log",
        )  # fmt: skip
        if not wait_until(lambda: self.reachable(app.host.address, RSYNC_PORT), 10):
            raise RuntimeError(
                f"rsync daemon does not listen:\n{log_tail(app.root / 'rsyncd.log')}"
            )

    def pull_build(self, app: AppHost) -> str:
        """``flask pull-build`` on the nginx host, from ``app``'s build."""
        environment = {**os.environ, "VAR_DIR": str(self.nginx.root / "var")}
        source = f"rsync://{app.host.address}:{RSYNC_PORT}/podcast/build"
        command = [sys.executable, "-m", "flask", "--app", "webapp", "pull-build", source,
                   "--dest", str(self.nginx.build)]  # fmt: skip
        return self.network.run(self.nginx.host, command, env=environment)

    # -- using it --------------------------------------------------------------

    def reachable(self, host_address: str, port: int) -> bool:
        with self.network.entered(self.client):
            try:
                socket.create_connection((host_address, port), timeout=1).close()
            except OSError:
                return False
        return True

    def get(self, path: str, headers: dict[str, str] | None = None):
        """One request from the client host through nginx."""
        with self.network.entered(self.client):
            return get(self.url + path, headers)

    def load(self, path_for, **options: Any) -> NamespacedLoad:
        return NamespacedLoad(self.network, self.client, self.url, path_for, **options)

    @contextmanager
    def admin(self) -> Iterator[Any]:
        """A superuser connection to PostgreSQL over its unix socket (outside any pool)."""
        import psycopg2

        connection = psycopg2.connect(
            host=str(self.postgres.root), port=self.postgres.port, user="postgres", dbname="podcast"
        )
        connection.autocommit = True
        try:
            yield connection
        finally:
            connection.close()

    def diagnostics(self, lines: int = 40) -> str:
        """What a failed test prints: the profiles stored, and every server's log tail."""
        try:
            with self.admin() as admin, admin.cursor() as cursor:
                cursor.execute(
                    "SELECT id, meta->>'host', meta->>'pid' FROM request_profiles ORDER BY id"
                )
                stored = "\n".join(" ".join(map(str, row)) for row in cursor.fetchall())
        except Exception as error:  # the store's table may be missing: say so, go on
            stored = f"(cannot read: {error})"
        logs = {app.name: app.instance.log for app in self.apps}
        logs["pgbouncer"] = self.postgres.root / "pgbouncer" / "pgbouncer.log"
        logs["postgresql"] = self.postgres.log
        tails = "".join(f"\n--- {name}:\n{log_tail(log, lines)}" for name, log in logs.items())
        return f"\n--- request_profiles:\n{stored}{tails}"

    def app_pids(self) -> dict[str, list[int]]:
        return {app.name: app.pids() for app in self.apps}

    # -- removing it ---------------------------------------------------------

    def stop(self) -> None:
        """Stop everything by pid, then delete the namespaces (killing, by pid, what is left)."""
        steps = [self.nginx.stop, *(app.stop for app in self.apps)]
        steps += [lambda: _terminate(self.rsync), lambda: _terminate(self.pgbouncer)]
        steps += [self.postgres.destroy, self.network.destroy]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as error:  # the next steps still run
                errors.append(error)
        if errors:
            raise errors[0]


def _terminate(popen: subprocess.Popen | None, timeout: float = 10) -> None:
    if popen is None or popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout)


def wait_for(condition, timeout: float, message: str) -> Any:
    """``wait_until`` that fails the test with ``message`` when it times out."""
    value = wait_until(condition, timeout)
    if not value:
        raise AssertionError(message)
    return value
