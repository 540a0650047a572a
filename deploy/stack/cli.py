"""``python -m deploy.stack`` (``scripts/serve``): start, stop, status, reload, render."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .render import NginxConfig, render_nginx
from .settings import (
    DEFAULT_API_RATE_LIMIT,
    DEFAULT_HARAKIRI,
    READ_TIMEOUT_MARGIN,
    StackError,
    StackSettings,
    default_run_dir,
    find_nginx,
)
from .stack import Stack
from .supervise import NotRunning, Supervisor
from .tls import make_self_signed_certificate

File = click.Path(path_type=Path, dir_okay=False)
Directory = click.Path(path_type=Path, file_okay=False)
run_dir_option = click.option("--run-dir", type=Directory, help="Default: var/run.")


def say(message: str) -> None:
    click.echo(f"==> {message}", err=True)


def _run_dir(run_dir: Path | None) -> Path:
    return Path(os.path.abspath(run_dir or default_run_dir()))


class StackGroup(click.Group):
    """A StackError from any command is a ClickException: its message, and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StackError as error:
            raise click.ClickException(str(error)) from None


@click.group(
    cls=StackGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The production stack (nginx in front of uWSGI, under supervisord) as the current user,
    with every file in var/run/. Without a command: start."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(start)


@cli.command()
@run_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", 8000)))
@click.option("--https-port", type=int, help="Also HTTPS (HTTP/2), self-signed by default.")
@click.option("--certificate", type=File)
@click.option("--certificate-key", type=File)
@click.option("--uwsgi-instances", type=click.IntRange(1), default=1, show_default=True)
@click.option("--processes", type=click.IntRange(1), help="Workers per instance (default: CPUs).")
@click.option("--build-dir", type=Directory, help="The frozen site (default: FREEZE_DIR).")
@click.option("--freeze/--no-freeze", default=True, help="Freeze the site first (incremental).")
@click.option("--no-nginx", is_flag=True, help="uWSGI alone, serving the frozen files itself.")
@click.option("--access-log/--no-access-log", default=True, help="nginx's access log.")
@click.option("--detach", is_flag=True, help="Return once the site answers; `stop` stops it.")
def start(processes: int | None, freeze: bool, no_nginx: bool, detach: bool, **fields: Any) -> None:
    """Start the stack and serve until Ctrl-C or `stop`.

    supervisord restarts a uWSGI instance that dies while nginx goes on serving the frozen
    pages; its log (spawned, exited ...) is printed here.
    """
    nginx = None if no_nginx else find_nginx()
    if nginx is None:
        say("no nginx: uWSGI alone serves the site (no security headers, micro-cache or HTTPS)")
    settings = StackSettings(nginx=nginx, **{k: v for k, v in fields.items() if v is not None})
    settings.run_dir = _run_dir(settings.run_dir)
    if processes is not None:
        settings.uwsgi_options["processes"] = str(processes)
    if settings.https_port is not None and not (settings.certificate and settings.certificate_key):
        tls = make_self_signed_certificate(settings.run_dir / "tls")
        settings.certificate, settings.certificate_key = tls
    if freeze:
        freeze_site(settings.build_dir)
    stack = Stack(settings)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: stop what started, then exit
        signal.signal(signum, signal.default_int_handler)
    stack.start(detach=detach, show_log=not detach)
    what = "uWSGI alone" if nginx is None else f"nginx + {len(stack.instances)} uWSGI instance(s)"
    where = settings.url + (f" and {settings.https_url}" if settings.https_url else "")
    serving = f"{what} serving {where}; `scripts/serve stop` stops it (logs in {settings.run_dir})"
    if detach:
        say(serving)
    else:
        sys.exit(_serve_until_stopped(stack, serving))


def _serve_until_stopped(stack: Stack, serving: str) -> int:
    """Say ``serving`` and wait for supervisord. Ctrl-C, SIGTERM or a hang-up shut it down
    (SIGTERM is its own orderly shutdown), as `scripts/serve stop` from another shell does."""
    supervisord = stack.supervisor.popen
    assert supervisord is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: supervisord.terminate())
    say(f"{serving}, as does Ctrl-C")
    status = supervisord.wait()
    stack.stop()  # removes what the programs left
    left = stack.leftovers()
    say(f"left behind: {left}" if left else "stopped; nothing left running")
    return 1 if status or left else 0


def freeze_site(build_dir: Path) -> None:
    """``flask freeze`` (only what changed is written). If it fails the app serves every page."""
    freeze = [sys.executable, "-m", "flask", "--app", "webapp", "freeze", "--dest", str(build_dir)]
    done = subprocess.run(freeze, capture_output=True, text=True)
    if done.returncode != 0:
        say(f"freezing failed, so the app serves every page:\n{done.stderr.strip()[-2000:]}")
    else:  # a progress bar, the summary, then the changed files (indented)
        lines = [x for x in done.stdout.splitlines() if x and not x.startswith(("Freezing", " "))]
        say(f"frozen into {build_dir}: {lines[0] if lines else 'done'}")


@cli.command()
@run_dir_option
def stop(run_dir: Path | None) -> None:
    """Stop a running stack (from any shell); nothing is left behind."""
    try:
        stack = Stack.attach(_run_dir(run_dir))
    except NotRunning as error:
        click.echo(error)
        return
    stack.stop()
    if left := stack.leftovers():
        raise StackError(f"still there: {', '.join(map(str, left))}")
    click.echo(f"stopped; nothing left running in {stack.run_dir}")


@cli.command()
@run_dir_option
def status(run_dir: Path | None) -> None:
    """supervisorctl's status of each program; exit status 3 when nothing runs."""
    supervisor = Supervisor(_run_dir(run_dir))
    try:
        click.echo(supervisor.call("getIdentification"))
    except NotRunning as error:
        click.echo(error)
        sys.exit(3)
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(supervisor.config)]
    sys.exit(subprocess.run([*ctl, "status"]).returncode)


@cli.command()
@run_dir_option
@click.option("--chain", is_flag=True, help="Replace workers one by one instead (no new code).")
def reload(run_dir: Path | None, chain: bool) -> None:
    """Rolling graceful reload of each uWSGI instance, then nginx (after a deploy or a freeze)."""
    Stack.attach(_run_dir(run_dir)).reload(chain=chain)
    click.echo("reloaded")


@cli.command()
@click.option("--out", "conf_dir", type=Directory, required=True, help="For nginx.conf & co.")
@click.option("--build-dir", type=Directory, required=True, help="/srv/podcast/var/build")
@click.option("--upstream", "upstreams", multiple=True, required=True, help="Each uWSGI socket.")
@click.option("--server-name", default="_", show_default=True)
@click.option("--http-listen", default="80", show_default=True)
@click.option("--https-listen", default="443", show_default=True)
@click.option("--certificate", type=File)
@click.option("--certificate-key", type=File)
@click.option("--no-https", is_flag=True, help="HTTP only (TLS ends in front of this nginx).")
@click.option("--user", default="www-data", show_default=True, help="nginx's workers' user.")
@click.option("--pid-file", type=File, default="/run/nginx.pid", show_default=True)
@click.option("--error-log", type=File, default="/var/log/nginx/error.log", show_default=True)
@click.option("--access-log", type=File, default="/var/log/nginx/access.log", show_default=True)
@click.option("--temp-dir", type=Directory, default="/var/lib/nginx", show_default=True)
@click.option("--cache-dir", type=Directory, default="/var/cache/nginx/podcast", show_default=True)
@click.option(
    "--api-rate-limit",
    type=click.IntRange(min=0),
    default=DEFAULT_API_RATE_LIMIT,
    show_default=True,
    help="Requests per second per client address on /api/, bursts of twice that (0: no limit).",
)
@click.option("--harakiri", type=int, default=DEFAULT_HARAKIRI, help="uWSGI's on the app servers.")
def render(no_https: bool, harakiri: int, api_rate_limit: int, **fields: Any) -> None:
    """Render the nginx config for a real server (deploy/README.md).

    Each --upstream is a uWSGI socket: unix:/run/podcast/uwsgi-1.sock or 10.0.0.5:3031. Port 80
    only redirects to HTTPS, and HSTS is sent, unless --no-https.
    """
    if not no_https and not (fields["certificate"] and fields["certificate_key"]):
        raise click.UsageError("HTTPS needs --certificate and --certificate-key (or --no-https)")
    fields["conf_dir"], fields["build_dir"] = (
        Path(os.path.abspath(fields[name])) for name in ("conf_dir", "build_dir")
    )
    if no_https:
        fields["https_listen"] = None
    conf = render_nginx(
        NginxConfig(
            **fields,
            https_only=not no_https,
            hsts=not no_https,
            open_file_cache_valid="10s",
            uwsgi_read_timeout=harakiri + READ_TIMEOUT_MARGIN,
            api_rate_limit=api_rate_limit or None,
        )
    )
    click.echo(f"rendered {conf}; check it with: nginx -t -c {conf}")
