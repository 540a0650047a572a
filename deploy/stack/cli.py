"""``python -m deploy.stack`` (``scripts/serve``): start, stop, status, reload, render."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, BinaryIO

import click

from .render import check_server_values, render_nginx
from .settings import StackError, StackSettings, default_run_dir, find_nginx, host_port
from .stack import NotRunning, Stack

Directory = click.Path(path_type=Path, file_okay=False)
run_dir_option = click.option(
    "--run-dir", type=Directory, default=default_run_dir, help="Default: var/run."
)


def say(message: str) -> None:
    click.echo(f"==> {message}", err=True)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The production stack (nginx in front of uWSGI, under supervisord) as the current user,
    with every file in var/run/. Without a command: start."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(start)


@cli.command()
@run_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, envvar="PORT", show_default=True
)
@click.option("--uwsgi-instances", type=click.IntRange(1), default=1, show_default=True)
@click.option("--processes", type=click.IntRange(1), help="Workers per instance (default: CPUs).")
@click.option("--build-dir", type=Directory, help="The frozen site (default: FREEZE_DIR).")
@click.option("--freeze/--no-freeze", default=True, help="Freeze the site first (incremental).")
@click.option("--no-nginx", is_flag=True, help="uWSGI alone, serving the frozen files itself.")
@click.option("--no-access-log", is_flag=True, help="No nginx access log (var/run/nginx/).")
@click.option("--detach", is_flag=True, help="Return once the site answers; `stop` stops it.")
def start(
    processes: int | None,
    freeze: bool,
    no_nginx: bool,
    no_access_log: bool,
    detach: bool,
    **fields: Any,
) -> None:
    """Start the stack and serve until Ctrl-C, SIGTERM, a hang-up or `stop`.

    supervisord restarts a uWSGI instance that dies while nginx goes on serving the frozen
    pages; its log (spawned, exited ...) is printed here.
    """
    nginx = None if no_nginx else find_nginx()
    if nginx is None:
        say("no nginx: uWSGI alone serves the site (no security headers, micro-cache or HTTPS)")
    settings = StackSettings(nginx=nginx, **{k: v for k, v in fields.items() if v is not None})
    if processes is not None:
        settings.uwsgi_options["processes"] = str(processes)
    if no_access_log:
        settings.nginx_options["access_log"] = None
    # The feed's and the API's absolute links: this server's (on loopback if it listens on every
    # address), unless they are set on purpose. scripts/freeze does the same with PORT.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    os.environ.setdefault("SITE_URL", f"http://{host_port(host, settings.port)}")
    if freeze:  # only what changed is written; if it fails, the app serves every page
        command = [sys.executable, "-m", "flask", "--app", "webapp", "freeze", "--dest"]
        if subprocess.run([*command, str(settings.build_dir)]).returncode:
            say("freezing failed, so the app serves every page")
    stack = Stack(settings)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: stop what started, then exit
        signal.signal(signum, signal.default_int_handler)
    stack.start(show_log=not detach)
    what = "uWSGI alone" if nginx is None else f"nginx + {len(stack.instances)} uWSGI instance(s)"
    say(f"{what} serving {settings.url}; `scripts/serve stop` stops it (logs in {stack.run_dir})")
    if detach:
        return
    try:  # until supervisord exits (`scripts/serve stop`) or this process is told to stop
        status = stack.supervisord.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        status = 0
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second one: stop all the same
        signal.signal(signum, signal.SIG_IGN)
    say("stopping: nginx, then uWSGI, each gracefully")
    stack.stop()  # then removes what the programs left
    left = stack.leftovers()
    say(f"left behind: {left}" if left else "stopped; nothing left running")
    sys.exit(1 if status or left else 0)


@cli.command()
@run_dir_option
def stop(run_dir: Path) -> None:
    """Stop a running stack (from any shell); nothing is left behind."""
    try:
        stack = Stack.attach(run_dir)
    except NotRunning as error:
        click.echo(error)
        return
    stack.stop()
    if left := stack.leftovers():
        raise StackError(f"still there: {', '.join(map(str, left))}")
    click.echo(f"stopped; nothing left running in {stack.run_dir}")


@cli.command()
@run_dir_option
def status(run_dir: Path) -> None:
    """supervisorctl's status of each program: exit status 3 if one is stopped or has exited,
    4 if no stack runs."""
    conf = run_dir / "supervisord.conf"
    if not conf.exists():  # else supervisorctl would look for one in the current directory
        click.echo(f"no stack has run in {run_dir}")
        sys.exit(4)
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"]
    os.execv(sys.executable, ctl)


@cli.command()
@run_dir_option
@click.option("--chain", is_flag=True, help="Replace workers one by one instead (no new code).")
def reload(run_dir: Path, chain: bool) -> None:
    """Rolling graceful reload of each uWSGI instance, then nginx (after a deploy or a freeze)."""
    Stack.attach(run_dir).reload(chain=chain)
    click.echo("reloaded")


@cli.command()
@click.argument("values", type=click.File("rb"))
@click.option("--out", "conf_dir", type=Directory, required=True, help="For nginx.conf & co.")
def render(values: BinaryIO, conf_dir: Path) -> None:
    """Render the nginx config for a real server from VALUES, a TOML file of the templates'
    values: a copy of deploy/nginx/production.toml, edited (deploy/README.md)."""
    try:
        variables = tomllib.load(values)
    except tomllib.TOMLDecodeError as error:
        raise StackError(f"{values.name}: {error}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8: a binary file, or another encoding
        reason = f"{error.reason} at byte {error.start}"
        raise StackError(f"{values.name}: not UTF-8 text ({reason})") from None
    check_server_values(variables)
    conf = render_nginx(conf_dir, **variables)
    click.echo(f"rendered {conf}; check it with: nginx -t -c {conf}")
