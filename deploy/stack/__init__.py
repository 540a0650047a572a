"""The production stack, nginx in front of uWSGI, run as the current user from deploy/.

    from deploy.stack import Stack, StackSettings
    stack = Stack(StackSettings(port=8000, uwsgi_instances=2))
    stack.start()      # renders var/run/nginx/, starts uWSGI and nginx, waits for the site
    stack.reload()     # rolling graceful reload of every uWSGI instance, then nginx
    stack.stop()       # graceful, then by force: no process, socket or pid file is left

``scripts/serve`` is this module's command line, and the stack tests use the
same class, so what is tested is what runs.

Everything lives in one run directory (``var/run`` by default)::

    uwsgi-<n>.sock  .pid  .fifo  -stats.sock  .log  .env    one set per uWSGI instance
    nginx/          nginx's prefix: rendered nginx.conf, site.conf, servers/*.conf,
                    nginx.pid, error.log, access.log, tmp/, cache/
    stack.json      what is running (read by ``scripts/serve stop`` from another shell)

uWSGI always runs deploy/uwsgi/uwsgi.ini itself: what differs per instance (the
socket, the pid file …) is passed as UWSGI_* environment variables, which
uWSGI reads as options; they are also written to ``uwsgi-<n>.env``, the format
deploy/systemd's EnvironmentFile reads. nginx's config is rendered from the
templates in deploy/nginx/ (``${NAME}`` placeholders; ``$name`` is nginx's own).

Where nginx is not installed, ``StackSettings(nginx=None)`` runs uWSGI alone on
the HTTP port, serving the frozen files itself (``check-static``): no security
headers, no micro-cache, no HTTPS; good enough to look at the site.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webapp.settings import load_settings

#: The repository: the stack is a tool of the checkout, never installed with the site.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

DEPLOY_DIR = PROJECT_ROOT / "deploy"
UWSGI_INI = DEPLOY_DIR / "uwsgi" / "uwsgi.ini"
NGINX_TEMPLATES = DEPLOY_DIR / "nginx"
#: Copied into nginx's config directory as they are.
NGINX_STATIC_FILES = ("headers.conf", "microcache.conf", "uwsgi_params")
#: What one client address may ask of /api/ in production: far more than an app paging the
#: catalogue needs, far less than a scraper would take.
DEFAULT_API_RATE_LIMIT = 20
#: uWSGI's default harakiri in uwsgi.ini; nginx waits this much longer for an answer.
DEFAULT_HARAKIRI = 30
READ_TIMEOUT_MARGIN = 5


class StackError(Exception):
    """The stack cannot start or stop as asked; the message says why (and where the log is)."""


# --------------------------------------------------------------------------
# Rendering nginx's configuration
# --------------------------------------------------------------------------


class ConfigTemplate(string.Template):
    """``${UPPER_CASE}`` placeholders only: nginx's ``$variables`` are left alone."""

    pattern = r"""
    \$(?:
      (?P<escaped>(?!))                |
      (?P<named>(?!))                  |
      {(?P<braced>[A-Z][A-Z0-9_]*)}    |
      (?P<invalid>(?!))
    )
    """
    flags = re.VERBOSE


def render_template(path: Path, values: Mapping[str, str]) -> str:
    """The template at ``path`` filled from ``values``; a missing value is an error, not a blank."""
    try:
        return ConfigTemplate(path.read_text()).substitute(values)
    except KeyError as error:
        raise StackError(f"{path.name}: no value for ${{{error.args[0]}}}") from None


def kernel_somaxconn(default: int = 511) -> int:
    """The kernel's cap on any listen backlog (net.core.somaxconn)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return default


@dataclass
class NginxConfig:
    """Everything the nginx templates need. The defaults are the local stack's (see _render)."""

    conf_dir: Path
    build_dir: Path
    upstreams: Sequence[str]
    http_listen: str = "127.0.0.1:8000"
    https_listen: str | None = None
    certificate: Path | None = None
    certificate_key: Path | None = None
    server_name: str = "localhost"
    #: Production: the HTTP server only redirects to HTTPS, and HSTS is sent.
    https_only: bool = False
    hsts: bool = False
    #: The ``user`` directive; None renders none (nginx not started as root ignores it anyway).
    user: str | None = None
    worker_processes: str = "auto"
    pid_file: Path | None = None
    error_log: Path | None = None
    #: None: the access log is off.
    access_log: Path | None = None
    temp_dir: Path | None = None
    cache_dir: Path | None = None
    #: False: no cache of open files; True: the deployed one (nginx.conf.template says why).
    open_file_cache: bool = True
    open_file_cache_valid: str = "2s"
    #: False: neither gzip_static nor on-the-fly gzip (for measuring them).
    gzip: bool = True
    worker_connections: int = 4096
    uwsgi_read_timeout: int = DEFAULT_HARAKIRI + READ_TIMEOUT_MARGIN
    backlog: int = field(default_factory=kernel_somaxconn)
    #: False renders an empty microcache.conf: every dynamic GET reaches uWSGI (for measuring it).
    microcache: bool = True
    #: Requests per second each client address may make to /api/, with bursts of twice that;
    #: beyond, a 429. None: no limit (the local stack, the lab: their load comes from one address).
    api_rate_limit: int | None = None

    def values(self) -> dict[str, str]:
        conf = self.conf_dir
        access_log = (
            f"access_log {self.access_log} redacted buffer=64k flush=5s;"
            if self.access_log is not None
            else "access_log off;"
        )
        if self.https_only and not self.https_listen:
            raise StackError("https_only needs an HTTPS listen address")
        http_body = (
            "return 301 https://$host$request_uri;" if self.https_only else "include site.conf;"
        )
        rate = self.api_rate_limit
        limit_req = (
            f"limit_req zone=podcast_api burst={2 * rate} nodelay;"
            if rate
            else "# No rate limit (NginxConfig.api_rate_limit)."
        )
        return {
            "USER_DIRECTIVE": f"user {self.user};"
            if self.user
            else "# No `user`: the workers run as the user who started nginx.",
            "WORKER_PROCESSES": self.worker_processes,
            "PID_FILE": str(self.pid_file or conf / "nginx.pid"),
            "ERROR_LOG": str(self.error_log or conf / "error.log"),
            "ACCESS_LOG": access_log,
            "TEMP_DIR": str(self.temp_dir or conf / "tmp"),
            "CACHE_DIR": str(self.cache_dir or conf / "cache"),
            "OPEN_FILE_CACHE": "max=2000 inactive=30s" if self.open_file_cache else "off",
            "OPEN_FILE_CACHE_VALID": self.open_file_cache_valid,
            "GZIP": "on" if self.gzip else "off",
            "WORKER_CONNECTIONS": str(self.worker_connections),
            "UPSTREAM_SERVERS": "\n".join(
                f"        server {upstream} max_fails=3 fail_timeout=5s;"
                for upstream in self.upstreams
            ),
            "UWSGI_READ_TIMEOUT": f"{self.uwsgi_read_timeout}s",
            "HSTS": "max-age=63072000" if self.hsts else "",
            "BUILD_DIR": str(self.build_dir),
            "HTTP_LISTEN": self.http_listen,
            "HTTPS_LISTEN": self.https_listen or "",
            "BACKLOG": str(self.backlog),
            "SERVER_NAME": self.server_name,
            "HTTP_BODY": http_body,
            "SSL_CERTIFICATE": str(self.certificate or ""),
            "SSL_CERTIFICATE_KEY": str(self.certificate_key or ""),
            "API_RATE": f"{rate or 1}r/s",
            "API_LIMIT_REQ": limit_req,
        }


def render_nginx(config: NginxConfig) -> Path:
    """Write nginx.conf and what it includes into ``config.conf_dir``; returns nginx.conf's path."""
    if not config.upstreams:
        raise StackError("nginx needs at least one uWSGI upstream")
    if config.https_listen and not (config.certificate and config.certificate_key):
        raise StackError("HTTPS needs a certificate and its key")
    values = config.values()
    conf = config.conf_dir
    servers = conf / "servers"
    servers.mkdir(parents=True, exist_ok=True)
    for stale in servers.glob("*.conf"):
        stale.unlink()
    rendered = {
        conf / "nginx.conf": "nginx.conf.template",
        conf / "site.conf": "site.conf.template",
        servers / "http.conf": "server-http.conf.template",
    }
    if config.https_listen:
        rendered[servers / "https.conf"] = "server-https.conf.template"
    for target, template in rendered.items():
        target.write_text(render_template(NGINX_TEMPLATES / template, values))
    for name in NGINX_STATIC_FILES:
        shutil.copyfile(NGINX_TEMPLATES / name, conf / name)
    if not config.microcache:
        (conf / "microcache.conf").write_text(
            "# The micro-cache is off (StackSettings.microcache).\n"
        )
    return conf / "nginx.conf"


def make_self_signed_certificate(
    directory: Path, hostnames: Sequence[str] = ("localhost",)
) -> tuple[Path, Path]:
    """A throwaway certificate and key (openssl), for the local HTTPS server and the tests."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl is not installed: it is needed to make a self-signed certificate")
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "cert.pem", directory / "key.pem"
    names = ",".join([f"DNS:{name}" for name in hostnames] + ["IP:127.0.0.1"])
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-days",
            "30",
            "-subj",
            f"/CN={hostnames[0]}",
            "-addext",
            f"subjectAltName={names}",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return certificate, key


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return text.rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: ask the kernel
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == str(pid) and stat[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return children


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def read_pid(path: Path, expect: str) -> int | None:
    """The pid in ``path`` if that process is alive and its command line mentions ``expect``."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    # A pid file outliving its process can name someone else's process: never signal that.
    if expect.lower() not in _cmdline(pid).lower():
        return None
    return pid


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_gone(pids: Sequence[int], timeout: float, popen: subprocess.Popen | None = None) -> bool:
    """Wait until every pid has exited; reaps ``popen`` (our own child) on the way."""
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            popen.poll()
        if not any(pid_alive(pid) for pid in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# Talking to uWSGI directly
# --------------------------------------------------------------------------


def _uwsgi_packet(variables: Mapping[str, str]) -> bytes:
    body = b""
    for key, value in variables.items():
        k, v = key.encode("latin-1"), value.encode("latin-1")
        body += struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
    return struct.pack("<BHB", 0, len(body), 0) + body


def uwsgi_get(socket_path: Path, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from a uWSGI socket in the uwsgi protocol, as nginx would: (status, reply)."""
    path_info, _, query = path.partition("?")
    packet = _uwsgi_packet(
        {
            "REQUEST_METHOD": "GET",
            "REQUEST_URI": path,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_SCHEME": "http",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "1",
            "HTTP_HOST": "localhost",
        }
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        connection.sendall(packet)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    if match is None:
        raise StackError(
            f"uWSGI at {socket_path} answered something that is not HTTP: {response[:80]!r}"
        )
    return int(match[1]), response


def read_stats(stats_socket: Path, timeout: float = 2.0) -> dict[str, Any]:
    """uWSGI's stats server JSON: the master's pid, the listen queue, each worker's pid, status,
    requests, rss."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(stats_socket))
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


# --------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------


def find_uwsgi() -> str | None:
    """uWSGI from this Python's environment first (pip installs it next to python), then PATH."""
    beside = Path(sys.executable).with_name("uwsgi")
    if beside.exists():
        return str(beside)
    return shutil.which("uwsgi")


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in (
        Path("/usr/sbin/nginx"),
        Path("/usr/local/sbin/nginx"),
        Path("/usr/local/nginx/sbin/nginx"),
    ):
        if candidate.exists():
            return str(candidate)
    return None


def _site_settings() -> dict[str, Any]:
    # The checkout's var/ unless VAR_DIR says otherwise (scripts/ export it too).
    return load_settings({}, default_var_dir=str(PROJECT_ROOT / "var"))


def _default_run_dir() -> Path:
    return Path(_site_settings()["VAR_DIR"]) / "run"


def _default_build_dir() -> Path:
    return Path(_site_settings()["FREEZE_DIR"])


@dataclass
class StackSettings:
    """How to run the stack. Every default is what ``scripts/serve`` uses."""

    run_dir: Path = field(default_factory=_default_run_dir)
    build_dir: Path = field(default_factory=_default_build_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    #: An HTTPS server (HTTP/2) on this port too; needs ``certificate`` and ``certificate_key``.
    https_port: int | None = None
    certificate: Path | None = None
    certificate_key: Path | None = None
    uwsgi_instances: int = 1
    #: uWSGI options for every instance, as in uwsgi.ini: {"processes": "2", "harakiri": "5"}.
    uwsgi_options: dict[str, str] = field(default_factory=dict)
    #: The app's settings (DATABASE_URL, SITE_URL …) on top of this process's environment.
    environment: dict[str, str] = field(default_factory=dict)
    #: The nginx binary; None runs uWSGI alone on the HTTP port.
    nginx: str | None = field(default_factory=find_nginx)
    uwsgi: str | None = field(default_factory=find_uwsgi)
    access_log: bool = True
    worker_processes: str = "auto"
    worker_connections: int = 4096
    open_file_cache: bool = True
    open_file_cache_valid: str = "2s"
    gzip: bool = True
    microcache: bool = True
    #: Requests per second per client address on /api/ (None: no limit; see NginxConfig).
    api_rate_limit: int | None = None
    #: Seconds to wait for the site to answer at start, and for processes to exit at stop.
    start_timeout: float = 60.0
    stop_timeout: float = 40.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str | None:
        return f"https://{self.host}:{self.https_port}" if self.https_port else None


@dataclass
class UwsgiInstance:
    """One uWSGI master and its workers, with its own socket, FIFO, pid file and stats socket."""

    number: int
    run_dir: Path
    popen: subprocess.Popen | None = None

    def _path(self, suffix: str) -> Path:
        return self.run_dir / f"uwsgi-{self.number}{suffix}"

    @property
    def socket(self) -> Path:
        return self._path(".sock")

    @property
    def pid_file(self) -> Path:
        return self._path(".pid")

    @property
    def fifo(self) -> Path:
        return self._path(".fifo")

    @property
    def stats_socket(self) -> Path:
        return self._path("-stats.sock")

    @property
    def log(self) -> Path:
        return self._path(".log")

    @property
    def env_file(self) -> Path:
        return self._path(".env")

    def files(self) -> list[Path]:
        """What a running instance leaves in the run directory (the log stays after it stops)."""
        return [self.socket, self.pid_file, self.fifo, self.stats_socket]

    def options(self) -> dict[str, str]:
        return {
            "UWSGI_SOCKET": str(self.socket),
            "UWSGI_SAFE_PIDFILE": str(self.pid_file),
            "UWSGI_MASTER_FIFO": str(self.fifo),
            "UWSGI_STATS": str(self.stats_socket),
        }

    def master_pid(self) -> int | None:
        if self.popen is not None and self.popen.poll() is None:
            return self.popen.pid
        return read_pid(self.pid_file, "uwsgi")

    def stats(self) -> dict[str, Any]:
        return read_stats(self.stats_socket)

    def worker_pids(self) -> list[int]:
        return [worker["pid"] for worker in self.stats()["workers"] if worker["pid"]]

    def command(self, letters: str) -> None:
        """Write to the master FIFO (uWSGI's MasterFIFO): r graceful reload, c chain reload,
        q graceful stop."""
        descriptor = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(descriptor, letters.encode())
        finally:
            os.close(descriptor)

    def ready(self, *, not_pids: Sequence[int] = ()) -> bool:
        """Every worker is up and accepting (and, after a reload, none of ``not_pids`` is one)."""
        try:
            stats = self.stats()
        except (OSError, ValueError):
            return False
        workers = stats.get("workers", [])
        return bool(workers) and all(
            worker["pid"]
            and worker.get("accepting")
            and worker["pid"] not in not_pids
            and worker["status"] in ("idle", "busy")
            for worker in workers
        )


class Stack:
    """nginx and N uWSGI instances (or uWSGI alone), started and stopped together.

    See the module docstring.
    """

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.run_dir = Path(os.path.abspath(self.settings.run_dir))
        self.instances = [
            UwsgiInstance(n, self.run_dir) for n in range(1, self.settings.uwsgi_instances + 1)
        ]
        self.nginx_dir = self.run_dir / "nginx"
        self.nginx_popen: subprocess.Popen | None = None
        self.state_file = self.run_dir / "stack.json"

    # -- configuration ------------------------------------------------------

    @property
    def standalone(self) -> bool:
        return self.settings.nginx is None

    def harakiri(self) -> int:
        value = self.settings.uwsgi_options.get("harakiri") or os.environ.get("UWSGI_HARAKIRI")
        return int(value) if value else DEFAULT_HARAKIRI

    def nginx_config(self) -> NginxConfig:
        settings = self.settings
        user = None
        if os.geteuid() == 0:
            # Started as root, nginx would switch its workers to `nobody`, who can read neither a
            # build in the invoking user's tree (pytest's tmp dirs are 0700) nor connect to the 0660
            # sockets. The local stack runs as whoever started it, root included; production uses
            # www-data (deploy/systemd/).
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
            gzip=settings.gzip,
            access_log=self.nginx_dir / "access.log" if settings.access_log else None,
            open_file_cache_valid=settings.open_file_cache_valid,
            uwsgi_read_timeout=self.harakiri() + READ_TIMEOUT_MARGIN,
            microcache=settings.microcache,
            api_rate_limit=settings.api_rate_limit,
        )

    def uwsgi_environment(self, instance: UwsgiInstance) -> dict[str, str]:
        """The environment of one uWSGI instance: ours, the app's settings, and UWSGI_* options."""
        options = instance.options()
        for name, value in self.settings.uwsgi_options.items():
            options["UWSGI_" + name.upper().replace("-", "_")] = str(value)
        if self.standalone:
            build = os.path.abspath(self.settings.build_dir)
            options.update(
                {
                    "UWSGI_HTTP_SOCKET": f"{self.settings.host}:{self.settings.port}",
                    "UWSGI_CHECK_STATIC": build,
                    "UWSGI_STATIC_INDEX": "index.html",
                    "UWSGI_STATIC_GZIP_ALL": "true",
                    "UWSGI_OFFLOAD_THREADS": "1",
                }
            )
        return {**os.environ, **self.settings.environment, **options}

    # -- start -------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until the site answers; on a failure, stop what was started."""
        settings = self.settings
        if settings.uwsgi is None:
            raise StackError(
                "uWSGI is not installed (pip install uWSGI, or ./scripts/serve which installs it)"
            )
        if self.standalone and len(self.instances) > 1:
            raise StackError("without nginx there is one uWSGI instance (it owns the HTTP port)")
        running = self.running_components()
        if running:
            raise StackError(
                f"a stack is already running in {self.run_dir} ({', '.join(running)}): "
                "`scripts/serve stop` first"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        try:
            if not self.standalone:
                self._prepare_nginx()
            for instance in self.instances:
                self._start_uwsgi(instance)
            for instance in self.instances:
                self._wait_uwsgi_ready(instance)
            if not self.standalone:
                self.start_nginx()
            self._wait_site(settings.url)
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def _prepare_nginx(self) -> None:
        for sub in ("tmp", "cache"):
            (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
        conf = render_nginx(self.nginx_config())
        result = subprocess.run(
            self._nginx_command(conf) + ["-t", "-q"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise StackError(f"nginx rejected {conf}:\n{result.stderr.strip()}")

    def _nginx_command(self, conf: Path) -> list[str]:
        assert self.settings.nginx is not None
        return [
            self.settings.nginx,
            "-p",
            f"{self.nginx_dir}/",
            "-c",
            str(conf),
            "-e",
            str(self.nginx_dir / "error.log"),
        ]

    def start_uwsgi(self, instance: UwsgiInstance) -> None:
        """(Re)start one instance and wait until its workers accept."""
        self._start_uwsgi(instance)
        self._wait_uwsgi_ready(instance)

    def _start_uwsgi(self, instance: UwsgiInstance) -> None:
        assert self.settings.uwsgi is not None
        environment = self.uwsgi_environment(instance)
        instance.env_file.write_text(
            "# The UWSGI_* options of this instance (deploy/uwsgi/uwsgi.ini reads them).\n"
            + "".join(
                f"{key}={value}\n"
                for key, value in sorted(environment.items())
                if key.startswith("UWSGI_")
            )
        )
        for path in instance.files():
            path.unlink(missing_ok=True)
        with open(instance.log, "ab") as log:
            instance.popen = subprocess.Popen(
                [self.settings.uwsgi, "--ini", str(UWSGI_INI)],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                # Its own session: a Ctrl-C in the terminal reaches scripts/serve, which stops the
                # stack in order.
                start_new_session=True,
            )

    def _wait_uwsgi_ready(self, instance: UwsgiInstance, not_pids: Sequence[int] = ()) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while not instance.ready(not_pids=not_pids):
            if instance.popen is not None and instance.popen.poll() is not None:
                raise StackError(
                    f"uWSGI instance {instance.number} exited with status"
                    f" {instance.popen.returncode}; its log ({instance.log}) ends:\n"
                    + log_tail(instance.log)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"uWSGI instance {instance.number} not ready after"
                    f" {self.settings.start_timeout:.0f} s; its log ({instance.log}) ends:\n"
                    + log_tail(instance.log)
                )
            time.sleep(0.05)

    def start_nginx(self) -> None:
        log = self.nginx_dir / "error.log"
        with open(log, "ab") as stderr:
            self.nginx_popen = subprocess.Popen(
                self._nginx_command(self.nginx_dir / "nginx.conf") + ["-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while read_pid(self.nginx_dir / "nginx.pid", "nginx") is None:
            if self.nginx_popen.poll() is not None:
                raise StackError(
                    f"nginx exited with status {self.nginx_popen.returncode};"
                    f" {log} ends:\n{log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"nginx wrote no pid file in 10 s; {log} ends:\n{log_tail(log)}")
            time.sleep(0.02)

    def _wait_site(self, url: str) -> None:
        """Until /health answers: 200, or 503 when the database is down (the stack itself is up)."""
        deadline = time.monotonic() + self.settings.start_timeout
        last_error: object = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    return
            except urllib.error.HTTPError as error:
                if error.code == 503:
                    return
                last_error = error
            except OSError as error:
                last_error = error
            time.sleep(0.05)
        raise StackError(
            f"{url}/health did not answer in {self.settings.start_timeout:.0f} s: {last_error}"
        )

    def _write_state(self) -> None:
        state = {
            "launcher_pid": os.getpid(),
            "url": self.settings.url,
            "https_url": self.settings.https_url,
            "nginx": None if self.standalone else {"pid_file": str(self.nginx_dir / "nginx.pid")},
            "uwsgi": [{"number": i.number, "pid_file": str(i.pid_file)} for i in self.instances],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    # -- control -------------------------------------------------------------

    def nginx_pid(self) -> int | None:
        if self.nginx_popen is not None and self.nginx_popen.poll() is None:
            return self.nginx_popen.pid
        return read_pid(self.nginx_dir / "nginx.pid", "nginx")

    def reload(self, *, chain: bool = False) -> None:
        """Reload each uWSGI instance in turn (the next once the previous serves again), then nginx.

        The default is uWSGI's graceful reload (``r``): the master waits for running requests,
        re-execs itself with the new code and config, keeps its socket, and forks new workers;
        requests that arrive meanwhile wait in the socket's backlog. With several instances nginx
        also sends them to the others. ``chain`` (``c``) replaces the workers one at a time
        instead, from the master's already loaded app: it never stops serving, but new code needs
        ``lazy-apps`` (see deploy/README.md).
        """
        for instance in self.instances:
            self.reload_uwsgi(instance, chain=chain)
        if not self.standalone:
            self.reload_nginx()

    def reload_uwsgi(self, instance: UwsgiInstance, *, chain: bool = False) -> None:
        old = instance.worker_pids()
        instance.command("c" if chain else "r")
        self._wait_uwsgi_ready(instance, not_pids=old)

    def reload_nginx(self) -> None:
        """Re-render nginx's config (a new build's episodes.map is read now) and reload it."""
        pid = self.nginx_pid()
        if pid is None:
            raise StackError("nginx is not running")
        self._prepare_nginx()
        old_workers = child_pids(pid)
        _signal(pid, signal.SIGHUP)
        # The new workers are up once none of the old ones is among the master's children.
        deadline = time.monotonic() + 10
        while set(child_pids(pid)) & set(old_workers) and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- stop --------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop nginx, then every uWSGI instance: gracefully, then by force.

        Returns the leftover files removed.
        """
        self.stop_nginx(self.settings.stop_timeout)
        self.stop_uwsgi(*self.instances, timeout=self.settings.stop_timeout)
        leftovers = self._remove_leftovers()
        self.state_file.unlink(missing_ok=True)
        return leftovers

    def stop_nginx(self, timeout: float = 20.0) -> None:
        pid = self.nginx_pid()
        if pid is not None:
            workers = child_pids(pid)
            # QUIT: finish the requests in progress, then exit; TERM: exit now.
            _stop_process(pid, workers, [signal.SIGQUIT, signal.SIGTERM], timeout, self.nginx_popen)
        if self.nginx_popen is not None:
            self.nginx_popen.wait()
        self.nginx_popen = None

    def stop_uwsgi(self, *instances: UwsgiInstance, timeout: float = 40.0) -> None:
        """Stop these instances together (each master takes about a second to notice)."""
        asked = []
        for instance in instances:
            pid = instance.master_pid()
            if pid is None:
                continue
            workers = child_pids(pid)
            try:
                instance.command(
                    "q"
                )  # graceful: running requests finish (up to worker-reload-mercy)
                first: int | None = None
            except OSError:
                first = signal.SIGTERM  # no FIFO: die-on-term makes SIGTERM the same graceful stop
            asked.append((instance, pid, workers, first))
        for instance, pid, workers, first in asked:
            # Then SIGINT: stop now; then SIGKILL.
            _stop_process(pid, workers, [first, signal.SIGINT], timeout, instance.popen)
        for instance in instances:
            if instance.popen is not None:
                instance.popen.wait()
            instance.popen = None
            for path in instance.files():
                path.unlink(
                    missing_ok=True
                )  # vacuum removes all but the FIFO; a killed master removes none

    def _remove_leftovers(self) -> list[str]:
        """Sockets, FIFOs and pid files of processes that are gone (never of running ones)."""
        removed = []
        for instance in self.instances:
            if instance.master_pid() is None:
                for path in instance.files():
                    if path.exists() or path.is_symlink():
                        path.unlink()
                        removed.append(path.name)
        nginx_pid_file = self.nginx_dir / "nginx.pid"
        if nginx_pid_file.exists() and self.nginx_pid() is None:
            nginx_pid_file.unlink()
            removed.append("nginx/nginx.pid")
        return removed

    def running_components(self) -> list[str]:
        running = [
            f"uWSGI {i.number} (pid {pid})" for i in self.instances if (pid := i.master_pid())
        ]
        if (pid := self.nginx_pid()) is not None:
            running.append(f"nginx (pid {pid})")
        return running

    def leftovers(self) -> list[Path]:
        """Files a stopped stack must not leave: sockets, FIFOs, pid files."""
        paths = [path for instance in self.instances for path in instance.files()]
        paths += [self.nginx_dir / "nginx.pid", self.state_file]
        return [path for path in paths if path.exists() or path.is_symlink()]


def _stop_process(
    pid: int,
    workers: Sequence[int],
    signals: Sequence[int | None],
    timeout: float,
    popen: subprocess.Popen | None,
) -> None:
    """Send ``signals`` to ``pid`` one after another (None: only wait), each with an equal share of
    ``timeout`` to work; then SIGKILL it. Its ``workers`` get a moment more, then SIGKILL too."""
    step = timeout / max(1, len(signals))
    for signum in signals:
        if signum is not None:
            _signal(pid, signum)
        if wait_gone([pid], step, popen):
            break
    else:
        _signal(pid, signal.SIGKILL)
        wait_gone([pid], 5.0, popen)
    # Workers outlive a killed master (nginx's do; uWSGI's only without no-orphans).
    if not wait_gone(workers, 2.0):
        for worker in workers:
            _signal(worker, signal.SIGKILL)
        wait_gone(workers, 5.0)


# --------------------------------------------------------------------------
# Command line: scripts/serve
# --------------------------------------------------------------------------

COMMANDS = ("start", "stop", "status", "reload", "render")


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def stack_from_state(run_dir: Path) -> Stack | None:
    """The stack recorded in ``run_dir/stack.json`` by the ``scripts/serve`` that started it."""
    try:
        state = json.loads((run_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    settings = StackSettings(run_dir=run_dir, uwsgi_instances=max(1, len(state.get("uwsgi", []))))
    if state.get("nginx") is None:
        settings.nginx = None
    stack = Stack(settings)
    stack.launcher_pid = state.get("launcher_pid")  # type: ignore[attr-defined]
    return stack


def freeze_site(build_dir: Path, environment: Mapping[str, str]) -> bool:
    """``flask freeze`` into ``build_dir`` (only what changed is written). False if it failed."""
    command = [sys.executable, "-m", "flask", "--app", "webapp", "freeze", "--dest", str(build_dir)]
    result = subprocess.run(
        command, env={**os.environ, **environment}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        _say(
            "freezing the site failed, so the app serves every page:\n"
            + result.stderr.strip()[-2000:]
        )
        return False
    # Its output: a progress bar, one summary line, then the files that changed (indented).
    summary = [
        line
        for line in result.stdout.splitlines()
        if line and not line.startswith(("Freezing", " "))
    ]
    _say(f"frozen into {build_dir}: {summary[0] if summary else 'done'}")
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/serve",
        description=(
            "Run the production stack (nginx in front of uWSGI) as the current user, in var/run/."
        ),
        epilog=(
            "Commands: start (the default), stop, status, reload, render."
            " `scripts/serve COMMAND -h` for each."
        ),
    )
    commands = parser.add_subparsers(dest="command")
    run_dir = argparse.ArgumentParser(add_help=False)
    run_dir.add_argument(
        "--run-dir", type=Path, default=None, help="where the stack's files live (default var/run)"
    )

    start = commands.add_parser(
        "start", parents=[run_dir], help="start the stack and serve until Ctrl-C or `stop`"
    )
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    start.add_argument(
        "--https-port",
        type=int,
        default=None,
        help="also serve HTTPS with HTTP/2 (a self-signed certificate unless --certificate)",
    )
    start.add_argument("--certificate", type=Path, default=None)
    start.add_argument("--certificate-key", type=Path, default=None)
    start.add_argument(
        "--uwsgi-instances",
        type=int,
        default=1,
        help="uWSGI instances behind nginx's upstream (each with its own master and socket)",
    )
    start.add_argument(
        "--processes", type=int, default=None, help="workers per instance (default: CPU count)"
    )
    start.add_argument(
        "--build-dir", type=Path, default=None, help="the frozen site (default: FREEZE_DIR)"
    )
    start.add_argument(
        "--no-freeze", action="store_true", help="serve the build as it is, without freezing first"
    )
    start.add_argument(
        "--no-nginx", action="store_true", help="uWSGI alone, serving the frozen files itself"
    )
    start.add_argument(
        "--no-access-log", action="store_true", help="nginx's access log off (for benchmarks)"
    )
    start.add_argument(
        "--detach", action="store_true", help="return once the stack answers; `stop` stops it"
    )

    commands.add_parser(
        "stop", parents=[run_dir], help="stop a running stack; nothing is left behind"
    )
    commands.add_parser("status", parents=[run_dir], help="what is running")
    reload = commands.add_parser(
        "reload",
        parents=[run_dir],
        help="rolling graceful reload of the uWSGI instances, then nginx (after a deploy/freeze)",
    )
    reload.add_argument(
        "--chain", action="store_true", help="replace workers one by one instead (no new code)"
    )

    render = commands.add_parser(
        "render", help="render the nginx config for a real server (deploy/README.md)"
    )
    render.add_argument(
        "--out", type=Path, required=True, help="a directory for nginx.conf and what it includes"
    )
    render.add_argument(
        "--build-dir", type=Path, required=True, help="the frozen site, e.g. /srv/podcast/var/build"
    )
    render.add_argument(
        "--upstream",
        action="append",
        required=True,
        help="a uWSGI socket: unix:/run/podcast/uwsgi.sock or 10.0.0.5:3031 (repeat for each)",
    )
    render.add_argument("--server-name", default="_")
    render.add_argument("--http-listen", default="80")
    render.add_argument("--https-listen", default="443")
    render.add_argument("--certificate", type=Path, default=None)
    render.add_argument("--certificate-key", type=Path, default=None)
    render.add_argument(
        "--no-https", action="store_true", help="HTTP only (TLS ends in front of this nginx)"
    )
    render.add_argument("--user", default="www-data", help="who nginx's workers run as")
    render.add_argument("--pid-file", type=Path, default=Path("/run/nginx.pid"))
    render.add_argument("--error-log", type=Path, default=Path("/var/log/nginx/error.log"))
    render.add_argument("--access-log", type=Path, default=Path("/var/log/nginx/access.log"))
    render.add_argument("--temp-dir", type=Path, default=Path("/var/lib/nginx"))
    render.add_argument("--cache-dir", type=Path, default=Path("/var/cache/nginx/podcast"))
    render.add_argument(
        "--api-rate-limit",
        type=int,
        default=DEFAULT_API_RATE_LIMIT,
        help="requests per second per client address on /api/, bursts of twice that (0: no limit)",
    )
    render.add_argument(
        "--harakiri", type=int, default=DEFAULT_HARAKIRI, help="uWSGI's harakiri on the app servers"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "start")
    args = _parser().parse_args(argv)
    try:
        if args.command == "render":
            return _render(args)
        run_dir = Path(os.path.abspath(args.run_dir or _default_run_dir()))
        if args.command == "start":
            return _start(args, run_dir)
        stack = stack_from_state(run_dir)
        if args.command == "status":
            return _status(stack, run_dir)
        if args.command == "stop":
            return _stop(stack, run_dir)
        return _reload(stack, run_dir, chain=args.chain)
    except StackError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 1


def _start(args: argparse.Namespace, run_dir: Path) -> int:
    nginx = None if args.no_nginx else find_nginx()
    if nginx is None:
        _say(
            "nginx is not installed: uWSGI alone serves the site and the frozen files"
            " (check-static); no security headers, micro-cache or HTTPS"
        )
    settings = StackSettings(
        run_dir=run_dir,
        host=args.host,
        port=args.port,
        uwsgi_instances=args.uwsgi_instances,
        nginx=nginx,
        access_log=not args.no_access_log,
    )
    if args.build_dir is not None:
        settings.build_dir = Path(os.path.abspath(args.build_dir))
    if args.processes is not None:
        settings.uwsgi_options["processes"] = str(args.processes)
    if args.https_port is not None:
        if nginx is None:
            raise StackError("HTTPS needs nginx")
        settings.https_port = args.https_port
        if args.certificate is None:
            settings.certificate, settings.certificate_key = make_self_signed_certificate(
                run_dir / "tls"
            )
        else:
            settings.certificate, settings.certificate_key = args.certificate, args.certificate_key
    if not args.no_freeze:
        freeze_site(settings.build_dir, settings.environment)
    stack = Stack(settings)
    stack.start()
    where = settings.url + (f" and {settings.https_url}" if settings.https_url else "")
    what = "uWSGI alone" if nginx is None else f"nginx + {len(stack.instances)} uWSGI instance(s)"
    if args.detach:
        state = json.loads(stack.state_file.read_text())
        state["launcher_pid"] = None
        stack.state_file.write_text(json.dumps(state, indent=2) + "\n")
        _say(f"{what} serving {where}; `scripts/serve stop` stops it (logs in {run_dir})")
        return 0
    _say(f"{what} serving {where} (logs in {run_dir}); Ctrl-C or `scripts/serve stop` stops it")
    return _serve_until_stopped(stack)


def _serve_until_stopped(stack: Stack) -> int:
    """Foreground: SIGINT/SIGTERM stop the stack, SIGHUP reloads it; a component that dies stops
    the rest."""
    requests: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        requests.append("reload" if signum == signal.SIGHUP else "stop")

    previous = {
        signum: signal.signal(signum, on_signal)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    status = 0
    try:
        while True:
            if "stop" in requests:
                break
            if "reload" in requests:
                requests.remove("reload")
                _say("reloading: uWSGI instances one by one, then nginx")
                stack.reload()
                _say("reloaded")
            dead = [
                f"uWSGI instance {i.number} ({i.log})"
                for i in stack.instances
                if i.popen is not None and i.popen.poll() is not None
            ]
            if stack.nginx_popen is not None and stack.nginx_popen.poll() is not None:
                dead.append(f"nginx ({stack.nginx_dir / 'error.log'})")
            if dead:
                _say(f"stopped unexpectedly: {', '.join(dead)}; stopping the rest")
                status = 1
                break
            time.sleep(0.2)
    finally:
        _say("stopping")
        stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        left = stack.leftovers() + [Path(name) for name in stack.running_components()]
        _say("stopped; nothing left running" if not left else f"left behind: {left}")
    return status


def _status(stack: Stack | None, run_dir: Path) -> int:
    running = stack.running_components() if stack else []
    if not running:
        print(f"not running (in {run_dir})")
        return 1
    state = json.loads((run_dir / "stack.json").read_text())
    print(
        f"running: {', '.join(running)}; {state['url']}"
        + (f" and {state['https_url']}" if state.get("https_url") else "")
    )
    return 0


def _stop(stack: Stack | None, run_dir: Path) -> int:
    if stack is None:
        # No record (or a foreign one): stop whatever the default layout's pid files name.
        stack = Stack(
            StackSettings(
                run_dir=run_dir, uwsgi_instances=len(list(run_dir.glob("uwsgi-*.pid"))) or 1
            )
        )
    launcher = getattr(stack, "launcher_pid", None)
    if (
        launcher
        and launcher != os.getpid()
        and pid_alive(launcher)
        and "deploy.stack" in _cmdline(launcher)
    ):
        _signal(launcher, signal.SIGTERM)  # the foreground scripts/serve stops its stack and exits
        wait_gone([launcher], stack.settings.stop_timeout + 10)
    stack.stop()
    left = [str(path) for path in stack.leftovers()] + stack.running_components()
    if left:
        print(f"serve: still there: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"stopped; nothing left running in {run_dir}")
    return 0


def _reload(stack: Stack | None, run_dir: Path, *, chain: bool) -> int:
    if stack is None or not stack.running_components():
        raise StackError(f"no stack is running in {run_dir}")
    launcher = getattr(stack, "launcher_pid", None)
    if launcher and pid_alive(launcher) and "deploy.stack" in _cmdline(launcher) and not chain:
        _signal(
            launcher, signal.SIGHUP
        )  # the foreground scripts/serve re-renders nginx's config too
        print("reload requested from the running scripts/serve (see its output)")
        return 0
    for instance in stack.instances:
        stack.reload_uwsgi(instance, chain=chain)
    if not stack.standalone and (pid := stack.nginx_pid()) is not None:
        _signal(pid, signal.SIGHUP)
    print("reloaded")
    return 0


def _render(args: argparse.Namespace) -> int:
    https = not args.no_https
    if https and not (args.certificate and args.certificate_key):
        raise StackError("HTTPS needs --certificate and --certificate-key (or --no-https)")
    config = NginxConfig(
        conf_dir=Path(os.path.abspath(args.out)),
        build_dir=Path(os.path.abspath(args.build_dir)),
        upstreams=list(args.upstream),
        http_listen=args.http_listen,
        https_listen=args.https_listen if https else None,
        certificate=args.certificate,
        certificate_key=args.certificate_key,
        server_name=args.server_name,
        https_only=https,
        hsts=https,
        user=args.user,
        pid_file=args.pid_file,
        error_log=args.error_log,
        access_log=args.access_log,
        temp_dir=args.temp_dir,
        cache_dir=args.cache_dir,
        open_file_cache_valid="10s",
        uwsgi_read_timeout=args.harakiri + READ_TIMEOUT_MARGIN,
        api_rate_limit=args.api_rate_limit or None,
    )
    conf = render_nginx(config)
    print(f"rendered {conf}; check it with: nginx -t -c {conf}")
    return 0
