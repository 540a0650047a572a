"""``python -m deploy.stack`` (``scripts/serve``): start, stop, status, reload, render."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .render import render_nginx
from .settings import StackError, StackSettings, default_run_dir, find_nginx
from .stack import NotRunning, Stack

#: A throwaway certificate for localhost and 127.0.0.1: an ECDSA P-256 key, 30 days.
OPENSSL_REQ = (
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30"
    " -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
).split()

File = click.Path(path_type=Path, dir_okay=False)
Directory = click.Path(path_type=Path, file_okay=False)
run_dir_option = click.option(
    "--run-dir", type=Directory, default=default_run_dir, help="Default: var/run."
)


def say(message: str) -> None:
    click.echo(f"==> {message}", err=True)


def make_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """``openssl req`` writes a certificate and its key (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            [*OPENSSL_REQ, "-keyout", key, "-out", certificate], check=True, capture_output=True
        )
    except FileNotFoundError:
        raise StackError("openssl is not installed: it makes the self-signed certificate") from None
    return certificate, key


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
@click.option("--port", type=int, default=8000, envvar="PORT", show_default=True)
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
    if processes is not None:
        settings.uwsgi_options["processes"] = str(processes)
    if settings.https_port is not None and not (settings.certificate and settings.certificate_key):
        tls = make_self_signed_certificate(settings.run_dir / "tls")
        settings.certificate, settings.certificate_key = tls
    if freeze:  # only what changed is written; if it fails, the app serves every page
        command = [sys.executable, "-m", "flask", "--app", "webapp", "freeze", "--dest"]
        if subprocess.run([*command, str(settings.build_dir)]).returncode:
            say("freezing failed, so the app serves every page")
    stack = Stack(settings)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: stop what started, then exit
        signal.signal(signum, signal.default_int_handler)
    stack.start(show_log=not detach)
    what = "uWSGI alone" if nginx is None else f"nginx + {len(stack.instances)} uWSGI instance(s)"
    where = settings.url + (f" and {settings.https_url}" if settings.https_url else "")
    say(f"{what} serving {where}; `scripts/serve stop` stops it (logs in {stack.run_dir})")
    supervisord = stack.supervisord
    if detach or supervisord is None:
        return
    # Until supervisord exits. Ctrl-C, SIGTERM or a hang-up shut it down (SIGTERM is its own
    # orderly shutdown), as `scripts/serve stop` from another shell does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: supervisord.terminate())
    status = supervisord.wait()
    stack.stop()  # removes what the programs left
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
    """supervisorctl's status of each program; exit status 3 when nothing runs."""
    try:
        stack = Stack.attach(run_dir)
    except NotRunning as error:
        click.echo(error)
        sys.exit(3)
    click.echo(stack.call("getIdentification"))
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(stack.supervisord_conf)]
    sys.exit(subprocess.run([*ctl, "status"]).returncode)


@cli.command()
@run_dir_option
@click.option("--chain", is_flag=True, help="Replace workers one by one instead (no new code).")
def reload(run_dir: Path, chain: bool) -> None:
    """Rolling graceful reload of each uWSGI instance, then nginx (after a deploy or a freeze)."""
    Stack.attach(run_dir).reload(chain=chain)
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
# Per client address on /api/ (bursts of twice that): far more than an app paging the catalogue
# needs, far less than a scraper would take.
@click.option("--api-rate-limit", type=click.IntRange(0), default=20, help="Per second; 0: none.")
@click.option("--harakiri", type=int, help="uWSGI's on the app servers; default uwsgi.ini's (30).")
def render(conf_dir: Path, build_dir: Path, no_https: bool, **variables: Any) -> None:
    """Render the nginx config for a real server (deploy/README.md).

    Each --upstream is a uWSGI socket: unix:/run/podcast/uwsgi-1.sock or 10.0.0.5:3031. Port 80
    only redirects to HTTPS, and HSTS is sent, unless --no-https.
    """
    if no_https:
        variables["https_listen"] = None
    elif not (variables["certificate"] and variables["certificate_key"]):
        raise click.UsageError("HTTPS needs --certificate and --certificate-key (or --no-https)")
    # Absolute, but never resolved: the build is a symlink that each freeze swaps.
    build_dir = Path(os.path.abspath(build_dir))
    options = {"https_only": not no_https, "open_file_cache_valid": "10s"}
    conf = render_nginx(conf_dir, build_dir=build_dir, **options, **variables)
    click.echo(f"rendered {conf}; check it with: nginx -t -c {conf}")
