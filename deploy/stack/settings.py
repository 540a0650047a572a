"""Where the stack's parts are, and :class:`StackSettings`: how to run one."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from webapp.settings import load_settings

#: The repository: the stack is a tool of the checkout, never installed with the site.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
UWSGI_INI = DEPLOY_DIR / "uwsgi" / "uwsgi.ini"
#: uWSGI's harakiri in uwsgi.ini (nginx waits 5 s longer for an answer).
DEFAULT_HARAKIRI = 30


class StackError(Exception):
    """The stack cannot start or stop as asked; the message says why (and where the log is)."""


def find_uwsgi() -> str | None:
    """uWSGI from this Python's environment first (pip installs it next to python), then PATH."""
    beside = Path(sys.executable).with_name("uwsgi")
    return str(beside) if beside.exists() else shutil.which("uwsgi")


def find_nginx() -> str | None:
    """nginx on PATH, or where distributions and source builds put it (sbin is often not)."""
    path = "/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin"
    return shutil.which("nginx") or shutil.which("nginx", path=path)


def default_run_dir() -> Path:
    return site_path("VAR_DIR") / "run"


def site_path(name: str) -> Path:
    # The checkout's var/ unless VAR_DIR says otherwise (scripts/ export it too).
    return Path(load_settings({}, default_var_dir=str(PROJECT_ROOT / "var"))[name])


@dataclass(kw_only=True)
class NginxTuning:
    """nginx's knobs: the deployed values by default, each turned off to measure it (the lab).
    deploy/nginx/nginx.conf.j2 says why each is on.

    :param worker_processes: nginx's ``worker_processes``.
    :param worker_connections: nginx's ``worker_connections``.
    :param open_file_cache: nginx's cache of open files on, or off.
    :param open_file_cache_valid: how often a cached file is checked again.
    :param gzip: ``gzip_static`` and on-the-fly gzip on, or off.
    :param microcache: the one-second micro-cache on, or off (every dynamic GET reaches uWSGI).
    :param api_rate_limit: requests per second each client address may make to /api/, with
        bursts of twice that; beyond, a 429. None: no limit (the local stack and the lab,
        whose load comes from one address).
    """

    worker_processes: str = "auto"
    worker_connections: int = 4096
    open_file_cache: bool = True
    open_file_cache_valid: str = "2s"
    gzip: bool = True
    microcache: bool = True
    api_rate_limit: int | None = None


@dataclass(kw_only=True)
class StackSettings(NginxTuning):
    """How to run the stack: the :class:`NginxTuning` knobs, and these. Every default is what
    ``scripts/serve`` uses.

    :param run_dir: where the rendered configs, sockets and logs live (``var/run``).
    :param build_dir: the frozen site nginx serves (``FREEZE_DIR``).
    :param host: the address nginx (or uWSGI alone) listens on.
    :param port: the HTTP port.
    :param https_port: an HTTPS server (HTTP/2) on this port too; needs ``certificate`` and
        ``certificate_key``.
    :param uwsgi_instances: uWSGI masters behind nginx's upstream, each with its own socket.
    :param uwsgi_options: uWSGI options for every instance, as in uwsgi.ini:
        ``{"processes": "2", "harakiri": "5"}``.
    :param environment: the app's settings (``DATABASE_URL``, ``SITE_URL`` ...) on top of this
        process's environment. They reach uWSGI through supervisord's environment, never a file.
    :param nginx: the nginx binary; None runs uWSGI alone on the HTTP port, serving the frozen
        files itself.
    :param uwsgi: the uWSGI binary.
    :param access_log: nginx's access log on (``nginx/access.log``) or off.
    :param start_timeout: seconds for the site to answer at start, and for a reload.
    :param stop_timeout: seconds a program gets to stop gracefully before supervisord kills it.
    """

    run_dir: Path = field(default_factory=default_run_dir)
    build_dir: Path = field(default_factory=lambda: site_path("FREEZE_DIR"))
    host: str = "127.0.0.1"
    port: int = 8000
    https_port: int | None = None
    certificate: Path | None = None
    certificate_key: Path | None = None
    uwsgi_instances: int = 1
    uwsgi_options: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    nginx: str | None = field(default_factory=find_nginx)
    uwsgi: str | None = field(default_factory=find_uwsgi)
    access_log: bool = True
    start_timeout: float = 60.0
    stop_timeout: float = 40.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str | None:
        return f"https://{self.host}:{self.https_port}" if self.https_port else None
