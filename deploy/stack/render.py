"""The stack's configuration files, from Jinja2 templates: nginx's (deploy/nginx/*.j2) and
supervisord's (supervisord.conf.j2 beside this module). The choices, and the deployed values,
are in the templates; this module only fills them in."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, UndefinedError, meta

from .settings import DEPLOY_DIR, PROJECT_ROOT, UWSGI_INI, StackError

#: What supervisord.conf cannot hold: a line break; "%" (it expands %(name)s, in some values
#: twice); a double quote (environment values are quoted with it); ";" or "#" after whitespace
#: (it reads a comment there).
_UNWRITABLE = re.compile(r'[\r\n%"]|\s[;#]')


def supervisor_value(text: object) -> str:
    """``text`` for supervisord.conf, where it reads back as it is; StackError if it cannot."""
    if _UNWRITABLE.search(str(text)):
        raise StackError(f"supervisord.conf cannot hold {text!r}: a path without it, please")
    return str(text)


#: For config files: no HTML escaping, an unknown name is an error, and a line holding only a
#: ``{% tag %}`` leaves nothing behind.
TEMPLATES = Environment(
    loader=FileSystemLoader([DEPLOY_DIR / "nginx", Path(__file__).parent]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters["value"] = supervisor_value
TEMPLATES.filters["command"] = lambda words: supervisor_value(shlex.join(map(str, words)))
TEMPLATES.globals.update(uwsgi_ini=UWSGI_INI, directory=PROJECT_ROOT)


NGINX_TEMPLATES = ("nginx.conf", "site.conf", "microcache.conf")


@functools.cache
def nginx_variables() -> frozenset[str]:
    """Every name the nginx templates read: a value under any other name would be ignored."""
    # Each template, those the rendered ones include too (server-http.conf.j2 ...).
    names = sorted((DEPLOY_DIR / "nginx").glob("*.j2"))
    sources = (TEMPLATES.loader.get_source(TEMPLATES, path.name)[0] for path in names)  # type: ignore[union-attr]
    return frozenset().union(*(meta.find_undeclared_variables(TEMPLATES.parse(s)) for s in sources))


def render_nginx(conf_dir: Path, **variables: object) -> Path:
    """Write nginx.conf and what it includes into ``conf_dir``; returns nginx.conf.

    ``variables`` are the templates': nginx.conf.j2's header says which they need. A missing
    one, or a name no template reads (a misspelt knob), is a StackError.
    """
    if unknown := sorted(set(variables) - nginx_variables()):
        raise StackError(f"the nginx templates have no {', '.join(unknown)}")
    backlog = int(Path("/proc/sys/net/core/somaxconn").read_text())  # the kernel's cap
    try:
        texts = {
            n: TEMPLATES.get_template(f"{n}.j2").render(variables, backlog=backlog)
            for n in NGINX_TEMPLATES
        }
    except UndefinedError as error:  # StrictUndefined: a required value is missing
        raise StackError(f"the nginx templates need a value: {error.message}") from None
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (conf_dir / name).write_text(text)
    for name in ("headers.conf", "uwsgi_params"):  # included as they are
        shutil.copyfile(DEPLOY_DIR / "nginx" / name, conf_dir / name)
    return conf_dir / "nginx.conf"
