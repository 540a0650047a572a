"""The stack's configuration files, from Jinja2 templates: nginx's (deploy/nginx/*.j2) and
supervisord's (supervisord.conf.j2 beside this module). The choices, and the deployed values,
are in the templates; this module only fills them in."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import tomllib
from pathlib import Path
from typing import Any

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
#: A path as one nginx word: quoted, so that a space in it (a home directory's "My Site")
#: does not split it into two arguments. render_nginx has refused quotes, backslashes and "$"
#: in it.
TEMPLATES.filters["word"] = lambda path: f'"{path}"'
TEMPLATES.filters["command"] = lambda words: supervisor_value(shlex.join(map(str, words)))
TEMPLATES.globals.update(uwsgi_ini=UWSGI_INI, directory=PROJECT_ROOT)


NGINX_TEMPLATES = ("nginx.conf", "site.conf", "microcache.conf")
#: What would end an nginx directive, or start a comment or a quoted word, in a value the
#: templates print bare: a server_name of "a.org; return 200" would add a directive. And "$",
#: which even a quoted word keeps: root "/srv/$site" names a variable, not a directory.
_NOT_NGINX = re.compile(r"[;{}#$\"'\\\x00-\x1f]")
#: A server's values file (deploy/README.md): every name it must set, and each one's type.
PRODUCTION_VALUES = DEPLOY_DIR / "nginx" / "production.toml"
_TLS = frozenset({"https_listen", "certificate", "certificate_key"})
#: A time as nginx reads it: "10s", "500ms", "1m30s" (or bare seconds, which a value may be but
#: production.toml never writes: its "80" is a port).
_NGINX_TIME = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d))+")


@functools.cache
def nginx_variables() -> frozenset[str]:
    """Every name the nginx templates read (but ``backlog``, the kernel's): a value under any
    other name would be ignored."""
    # Each template, those the rendered ones include too (server-http.conf.j2 ...).
    paths = sorted((DEPLOY_DIR / "nginx").glob("*.j2"))
    sources = (TEMPLATES.loader.get_source(TEMPLATES, path.name)[0] for path in paths)  # type: ignore[union-attr]
    names = (meta.find_undeclared_variables(TEMPLATES.parse(source)) for source in sources)
    return frozenset().union(*names) - {"backlog"}


def check_server_values(values: dict[str, Any]) -> None:
    """A server's values (a copy of production.toml) hold every name production.toml sets (the
    TLS three all or none), each of its type; paths absolute, times as nginx reads them ("10s"),
    at least one upstream, counts not negative, and HTTPS only with an HTTPS server. StackError
    naming each problem otherwise: a template's default is the local stack's (a relative pid
    file, no rate limit ...)."""
    model = tomllib.loads(PRODUCTION_VALUES.read_text())
    required = model.keys() - (set() if _TLS & values.keys() else _TLS)
    problems = [f"{name} is missing" for name in sorted(required - values.keys())]
    problems += [f"no template reads {name}" for name in sorted(values.keys() - nginx_variables())]
    for name, value in values.items():
        like = model.get(name)
        if like is not None and type(value) is not type(like):
            problems.append(f"{name} must be {type(like).__name__}, like {like!r}")
        elif isinstance(like, str) and like.startswith("/") and not value.startswith("/"):
            problems.append(f"{name} must be an absolute path, not {value!r}")
        elif isinstance(like, str) and _NGINX_TIME.fullmatch(like):
            if not (value.isdigit() or _NGINX_TIME.fullmatch(value)):
                problems.append(f"{name} must be a time nginx reads, like {like!r}, not {value!r}")
        elif isinstance(like, int) and value < 0 or isinstance(like, list | str) and not value:
            problems.append(f"{name} cannot be {value!r}")
        elif (
            isinstance(like, list)
            and (kind := type(like[0]))
            and not all(type(item) is kind for item in value)
        ):
            problems.append(f"{name} must be a list of {kind.__name__}, like {like!r}")
        elif isinstance(like, list) and "" in value:
            problems.append(f"{name} cannot hold ''")
    if values.get("https_only") and not values.get("https_listen"):
        problems.append("https_only = true needs https_listen (else: https_only = false)")
    if problems:
        raise StackError(f"{PRODUCTION_VALUES.name} says: " + "; ".join(problems))


def render_nginx(conf_dir: Path, **variables: object) -> Path:
    """Write nginx.conf and what it includes into ``conf_dir``; returns nginx.conf.

    ``variables`` are the templates': nginx.conf.j2's header says which they need. A missing
    one, or a name no template reads (a misspelt knob), is a StackError.
    """
    if unknown := sorted(set(variables) - nginx_variables()):
        raise StackError(f"the nginx templates have no {', '.join(unknown)}")
    for name, value in variables.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str | Path) and _NOT_NGINX.search(str(item)):
                raise StackError(f"{name}: nginx would misread {str(item)!r}")
    backlog = int(Path("/proc/sys/net/core/somaxconn").read_text())  # the kernel's cap
    try:
        texts = {
            n: TEMPLATES.get_template(f"{n}.j2").render(variables, backlog=backlog)
            for n in NGINX_TEMPLATES
        }
    except UndefinedError as error:  # StrictUndefined: a required value is missing
        raise StackError(f"the nginx templates need a value: {error.message}") from None
    try:
        conf_dir.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (conf_dir / name).write_text(text)
        for name in ("headers.conf", "uwsgi_params"):  # included as they are
            shutil.copyfile(DEPLOY_DIR / "nginx" / name, conf_dir / name)
    except OSError as error:
        raise StackError(f"cannot write {conf_dir}: {error.strerror}") from None
    return conf_dir / "nginx.conf"
