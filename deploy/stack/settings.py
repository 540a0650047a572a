"""Where the stack's parts are, and :class:`StackSettings`: how to run one."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from webapp.settings import load_settings

#: The repository: the stack is a tool of the checkout, never installed with the site.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
UWSGI_INI = DEPLOY_DIR / "uwsgi" / "uwsgi.ini"


class StackError(click.ClickException):
    """The stack cannot start or stop as asked; the message says why (and where the log is).
    The command line prints it without a traceback: ``Error: ...``, exit status 1."""


def find_uwsgi() -> str | None:
    """uWSGI from this Python's environment first (pip installs it next to python), then PATH."""
    beside = Path(sys.executable).with_name("uwsgi")
    return str(beside) if beside.exists() else shutil.which("uwsgi")


def find_nginx() -> str | None:
    """nginx on PATH, or where distributions and source builds put it (sbin is often not)."""
    path = "/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin"
    return shutil.which("nginx") or shutil.which("nginx", path=path)


def site_path(name: str) -> Path:
    """The site's VAR_DIR or FREEZE_DIR: in the checkout's var/ unless the environment says."""
    return Path(load_settings({}, default_var_dir=str(PROJECT_ROOT / "var"))[name])


def default_run_dir() -> Path:
    return site_path("VAR_DIR") / "run"


@dataclass(kw_only=True)
class StackSettings:
    """How to run the stack. Every default is what ``scripts/serve`` uses.

    :param run_dir: where the rendered configs, sockets and logs live (``var/run``).
    :param build_dir: the frozen site nginx serves (``FREEZE_DIR``).
    :param host: the address nginx (or uWSGI alone) listens on.
    :param port: the HTTP port.
    :param uwsgi_instances: uWSGI masters behind nginx's upstream, each with its own socket.
    :param uwsgi_options: uWSGI options for every instance instead of uwsgi.ini's defaults:
        ``{"processes": "2", "harakiri": "5"}``.
    :param nginx_options: values for deploy/nginx/*.j2 instead of the deployed defaults
        written there: ``{"gzip": False, "worker_processes": 1}``; HTTPS (HTTP/2) too with
        ``https_listen`` (``"127.0.0.1:8443"``), ``certificate`` and ``certificate_key``.
    :param environment: the app's settings (``DATABASE_URL`` ...) on top of this process's
        environment. They reach uWSGI through supervisord's environment, never a file.
    :param nginx: the nginx binary; None: uWSGI alone serves HTTP and the frozen files.
    :param uwsgi: the uWSGI binary.
    :param start_timeout: seconds for the site to answer at start, and for a reload.
    :param stop_timeout: seconds a program gets to stop gracefully before supervisord kills it.
    """

    run_dir: Path = field(default_factory=default_run_dir)
    build_dir: Path = field(default_factory=lambda: site_path("FREEZE_DIR"))
    host: str = "127.0.0.1"
    port: int = 8000
    uwsgi_instances: int = 1
    uwsgi_options: dict[str, str] = field(default_factory=dict)
    nginx_options: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    nginx: str | None = field(default_factory=find_nginx)
    uwsgi: str | None = field(default_factory=find_uwsgi)
    start_timeout: float = 60.0
    stop_timeout: float = 40.0

    @property
    def address(self) -> str:
        """``host:port`` as nginx's listen and uWSGI's http-socket read it: an IPv6 address in
        brackets (nginx reads ``::1:8000`` as one port of that name)."""
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets: ``[::1]:8000``."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
