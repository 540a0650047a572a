"""The stack's configuration files, from Jinja2 templates: nginx's (deploy/nginx/*.j2) and
supervisord's (supervisord.conf.j2 beside this module). The choices are in the templates;
this module only fills them in."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .settings import DEFAULT_HARAKIRI, DEPLOY_DIR, READ_TIMEOUT_MARGIN, StackError

NGINX_TEMPLATES = DEPLOY_DIR / "nginx"
#: Copied into nginx's config directory as they are.
NGINX_STATIC_FILES = ("headers.conf", "uwsgi_params")
SUPERVISORD_TEMPLATE = Path(__file__).with_name("supervisord.conf.j2")


def templates(directory: Path) -> Environment:
    """Jinja2 for config files: no HTML escaping, an unknown name is an error, and a line
    holding only a ``{% tag %}`` leaves nothing behind."""
    return Environment(
        loader=FileSystemLoader(directory),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def kernel_somaxconn(default: int = 511) -> int:
    """The kernel's cap on any listen backlog (net.core.somaxconn)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return default


@dataclass
class NginxConfig:
    """Everything the nginx templates need. The defaults are the local stack's.

    :param conf_dir: where nginx.conf and what it includes are written.
    :param build_dir: the frozen site: nginx's root.
    :param upstreams: each uWSGI socket, ``unix:/run/podcast/uwsgi-1.sock`` or ``10.0.0.5:3031``.
    :param http_listen: the HTTP server's address.
    :param https_listen: an HTTPS server (HTTP/2) too, at this address; needs the certificate.
    :param certificate: the certificate (chain) for HTTPS.
    :param certificate_key: its key.
    :param server_name: nginx's ``server_name``.
    :param https_only: the HTTP server only redirects to HTTPS (production).
    :param hsts: Strict-Transport-Security over HTTPS (production, with a real certificate).
    :param user: the ``user`` directive; None renders none (the workers run as whoever
        started nginx).
    :param worker_processes: nginx's ``worker_processes``.
    :param pid_file: default ``conf_dir/nginx.pid``.
    :param error_log: default ``conf_dir/error.log``.
    :param access_log: the access log; None turns it off.
    :param temp_dir: nginx's temporary files; default ``conf_dir/tmp``.
    :param cache_dir: the micro-cache; default ``conf_dir/cache``.
    :param open_file_cache: False: no cache of open files (nginx.conf.j2 says why it is on).
    :param open_file_cache_valid: how often a cached file is checked again.
    :param gzip: False: neither gzip_static nor on-the-fly gzip (for measuring them).
    :param worker_connections: nginx's ``worker_connections``.
    :param uwsgi_read_timeout: seconds nginx waits for uWSGI: longer than its harakiri.
    :param backlog: the listen backlog; default the kernel's cap.
    :param microcache: False: no micro-cache, every dynamic GET reaches uWSGI (for measuring it).
    :param api_rate_limit: requests per second each client address may make to /api/, with
        bursts of twice that; beyond, a 429. None: no limit (the local stack, the lab: their
        load comes from one address).
    """

    conf_dir: Path
    build_dir: Path
    upstreams: Sequence[str]
    http_listen: str = "127.0.0.1:8000"
    https_listen: str | None = None
    certificate: Path | None = None
    certificate_key: Path | None = None
    server_name: str = "localhost"
    https_only: bool = False
    hsts: bool = False
    user: str | None = None
    worker_processes: str = "auto"
    pid_file: Path | None = None
    error_log: Path | None = None
    access_log: Path | None = None
    temp_dir: Path | None = None
    cache_dir: Path | None = None
    open_file_cache: bool = True
    open_file_cache_valid: str = "2s"
    gzip: bool = True
    worker_connections: int = 4096
    uwsgi_read_timeout: int = DEFAULT_HARAKIRI + READ_TIMEOUT_MARGIN
    backlog: int = field(default_factory=kernel_somaxconn)
    microcache: bool = True
    api_rate_limit: int | None = None

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise StackError("nginx needs at least one uWSGI upstream")
        if self.https_listen and not (self.certificate and self.certificate_key):
            raise StackError("HTTPS needs a certificate and its key")
        if self.https_only and not self.https_listen:
            raise StackError("https_only needs an HTTPS listen address")
        self.pid_file = self.pid_file or self.conf_dir / "nginx.pid"
        self.error_log = self.error_log or self.conf_dir / "error.log"
        self.temp_dir = self.temp_dir or self.conf_dir / "tmp"
        self.cache_dir = self.cache_dir or self.conf_dir / "cache"


def render_nginx(config: NginxConfig) -> Path:
    """Write nginx.conf and what it includes into ``config.conf_dir``; returns nginx.conf."""
    conf, nginx = config.conf_dir, templates(NGINX_TEMPLATES)
    (conf / "servers").mkdir(parents=True, exist_ok=True)
    for stale in (conf / "servers").glob("*.conf"):
        stale.unlink()
    files = {name: name for name in ("nginx.conf", "site.conf", "microcache.conf")}
    files["servers/http.conf"] = "server-http.conf"
    if config.https_listen:
        files["servers/https.conf"] = "server-https.conf"
    for target, template in files.items():
        (conf / target).write_text(nginx.get_template(f"{template}.j2").render(vars(config)))
    for name in NGINX_STATIC_FILES:
        shutil.copyfile(NGINX_TEMPLATES / name, conf / name)
    return conf / "nginx.conf"


# --------------------------------------------------------------------------
# supervisord.conf
# --------------------------------------------------------------------------

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
    environment = templates(SUPERVISORD_TEMPLATE.parent)
    environment.filters["value"] = supervisor_value
    environment.filters["command"] = lambda words: supervisor_value(shlex.join(map(str, words)))
    path.write_text(environment.get_template(SUPERVISORD_TEMPLATE.name).render(values))
    return path
