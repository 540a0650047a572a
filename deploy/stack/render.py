"""The stack's configuration files: nginx's, from the templates in deploy/nginx/, and
supervisord's, from supervisord.conf.j2 beside this module."""

from __future__ import annotations

import re
import shlex
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .settings import DEFAULT_HARAKIRI, DEPLOY_DIR, READ_TIMEOUT_MARGIN, StackError

NGINX_TEMPLATES = DEPLOY_DIR / "nginx"
#: Copied into nginx's config directory as they are.
NGINX_STATIC_FILES = ("headers.conf", "microcache.conf", "uwsgi_params")


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
    """Everything the nginx templates need. The defaults are the local stack's."""

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
        }


def render_nginx(config: NginxConfig) -> Path:
    """Write nginx.conf and what it includes into ``config.conf_dir``; returns nginx.conf."""
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


# --------------------------------------------------------------------------
# supervisord.conf
# --------------------------------------------------------------------------

SUPERVISORD_TEMPLATE = Path(__file__).with_name("supervisord.conf.j2")
#: What supervisord.conf cannot hold: a line break; "%" (it expands %(name)s, in some values
#: twice); a double quote (environment values are quoted with it); ";" or "#" after whitespace
#: (it reads a comment there).
_UNWRITABLE = re.compile(r'[\r\n%"]|\s[;#]')


def supervisor_value(text: object) -> str:
    """``text`` for supervisord.conf, where it reads back as it is; StackError if it cannot."""
    if _UNWRITABLE.search(str(text)):
        raise StackError(f"supervisord.conf cannot hold {text!r}: a path without it, please")
    return str(text)


def render_supervisord(path: Path, **values: object) -> Path:
    """Write supervisord.conf.j2, filled from ``values``, to ``path``."""
    environment = Environment(
        loader=FileSystemLoader(SUPERVISORD_TEMPLATE.parent),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["value"] = supervisor_value
    environment.filters["command"] = lambda words: supervisor_value(shlex.join(map(str, words)))
    path.write_text(environment.get_template(SUPERVISORD_TEMPLATE.name).render(values))
    return path
