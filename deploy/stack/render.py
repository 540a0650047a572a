"""The stack's configuration files, from Jinja2 templates: nginx's (deploy/nginx/*.j2) and
supervisord's (supervisord.conf.j2 beside this module). The choices are in the templates;
this module only fills them in."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .settings import DEFAULT_HARAKIRI, DEPLOY_DIR, PROJECT_ROOT, UWSGI_INI, NginxTuning, StackError

if TYPE_CHECKING:
    from .stack import Stack


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


@dataclass(kw_only=True)
class NginxConfig(NginxTuning):
    """Everything the nginx templates need: the :class:`NginxTuning` knobs, and these. The
    defaults are the local stack's.

    :param conf_dir: where nginx.conf and the files it includes are written.
    :param build_dir: the frozen site: nginx's root.
    :param upstreams: each uWSGI socket, ``unix:/run/podcast/uwsgi-1.sock`` or ``10.0.0.5:3031``.
    :param http_listen: the HTTP server's address.
    :param https_listen: an HTTPS server (HTTP/2) too, at this address; needs the certificate.
    :param certificate: the certificate (chain) for HTTPS.
    :param certificate_key: its key.
    :param server_name: nginx's ``server_name``.
    :param https_only: the HTTP server only redirects to HTTPS (production).
    :param hsts: Strict-Transport-Security over HTTPS (production, with a real certificate).
    :param user: the ``user`` directive; None: the workers run as whoever started nginx.
    :param pid_file: default ``conf_dir/nginx.pid``.
    :param error_log: default ``conf_dir/error.log``.
    :param access_log: the access log; None turns it off.
    :param temp_dir: nginx's temporary files; default ``conf_dir/tmp``.
    :param cache_dir: the micro-cache; default ``conf_dir/cache``.
    :param harakiri: uWSGI's; nginx waits 5 s longer for an answer.
    :param backlog: the listen backlog; default the kernel's cap (net.core.somaxconn).
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
    pid_file: Path | None = None
    error_log: Path | None = None
    access_log: Path | None = None
    temp_dir: Path | None = None
    cache_dir: Path | None = None
    harakiri: int = DEFAULT_HARAKIRI
    backlog: int = field(
        default_factory=lambda: int(Path("/proc/sys/net/core/somaxconn").read_text())
    )

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise StackError("nginx needs at least one uWSGI upstream")
        if self.https_listen and not (self.certificate and self.certificate_key):
            raise StackError("HTTPS needs a certificate and its key (or no HTTPS)")
        if self.https_only and not self.https_listen:
            raise StackError("https_only needs an HTTPS listen address")
        # Absolute, but never resolved: the build is a symlink that each freeze swaps.
        self.build_dir = Path(os.path.abspath(self.build_dir))
        self.pid_file = self.pid_file or self.conf_dir / "nginx.pid"
        self.error_log = self.error_log or self.conf_dir / "error.log"
        self.temp_dir = self.temp_dir or self.conf_dir / "tmp"
        self.cache_dir = self.cache_dir or self.conf_dir / "cache"


def render_nginx(config: NginxConfig) -> Path:
    """Write nginx.conf and what it includes into ``config.conf_dir``; returns nginx.conf."""
    source, conf = DEPLOY_DIR / "nginx", config.conf_dir
    conf.mkdir(parents=True, exist_ok=True)
    for name in ("nginx.conf", "site.conf", "microcache.conf"):
        template = templates(source).get_template(f"{name}.j2")
        (conf / name).write_text(template.render(vars(config)))
    for name in ("headers.conf", "uwsgi_params"):  # included as they are
        shutil.copyfile(source / name, conf / name)
    return conf / "nginx.conf"


#: What supervisord.conf cannot hold: a line break; "%" (it expands %(name)s, in some values
#: twice); a double quote (environment values are quoted with it); ";" or "#" after whitespace
#: (it reads a comment there).
_UNWRITABLE = re.compile(r'[\r\n%"]|\s[;#]')


def supervisor_value(text: object) -> str:
    """``text`` for supervisord.conf, where it reads back as it is; StackError if it cannot."""
    if _UNWRITABLE.search(str(text)):
        raise StackError(f"supervisord.conf cannot hold {text!r}: a path without it, please")
    return str(text)


def render_supervisord(stack: Stack) -> None:
    """Write supervisord.conf.j2 (beside this module) for ``stack`` into its run directory."""
    environment = templates(Path(__file__).parent)
    environment.filters["value"] = supervisor_value
    environment.filters["command"] = lambda words: supervisor_value(shlex.join(map(str, words)))
    template = environment.get_template("supervisord.conf.j2")
    user = pwd.getpwuid(os.getuid()).pw_name
    values = {"stack": stack, "user": user, "uwsgi_ini": UWSGI_INI, "directory": PROJECT_ROOT}
    stack.supervisor.config.write_text(template.render(values))
