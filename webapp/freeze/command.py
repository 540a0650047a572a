"""``flask --app webapp freeze [--dest DIR]``: the site as static files for nginx, and
``flask --app webapp pull-build SOURCE [--dest DIR]``: a build frozen elsewhere made live here."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from ..db import DatabaseUnavailable, get_session, queries
from .build import BuildReport, SiteBuild
from .output import NGINX_INCLUDES, FreezeError
from .pull import pull_build
from .site import Page

#: After a freeze or a pull that changed what nginx reads only when it starts or reloads.
NGINX_MUST_RELOAD = "nginx must reload: its redirect maps changed"

#: Builds one `freeze` makes at most while the data keeps changing under them.
MAX_BUILDS = 3

#: Up to this many changed files are listed after the summary; manifest.json has them all.
LISTED_CHANGES = 20


dest_option = click.option(
    "--dest",
    type=click.Path(path_type=Path),
    help="Where nginx serves the site from; default: the FREEZE_DIR setting ($VAR_DIR/build).",
)


@click.command("freeze")
@dest_option
@with_appcontext
def freeze_command(dest: Path | None) -> None:
    """Freeze /, /episodes/, every episode, the feed, the 404 page and static files.

    Only pages whose data, templates or code changed are rendered; files whose
    bytes did not change keep their modification time. The new build goes live
    in one atomic rename, and manifest.json in it lists what changed.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # A publish while a build runs may come after the build read the data, and systemd's
    # `start` of a unit already running joins that run rather than queue another: so the
    # build that runs is made again until it shows the data as it is.
    for _ in range(MAX_BUILDS):
        report = _build(app, dest)
        try:
            if queries.site_state(get_session()).version == report.site_version:
                return
        except DatabaseUnavailable as error:  # the build is live all the same: not a failure
            click.echo(f"The build is live; whether the data changed during it is unknown: {error}")
            return
        click.echo("The data changed while the build ran: building again")
    click.echo(
        f"The data is still changing: {MAX_BUILDS} builds ran, the last is live;"
        " freeze again once it settles"
    )


def _build(app: Flask, dest: Path | None) -> BuildReport:
    """One build, its summary printed."""
    try:
        with SiteBuild(app, dest) as build:
            with click.progressbar(build.pending, label="Freezing", item_show_func=_url) as pages:
                for page in pages:
                    build.render(page)
            report = build.commit()
    except FreezeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.summary())
    if build.full_reason is not None:
        click.echo(f"Every page rendered: {build.full_reason}.")
    for path in report.changed[:LISTED_CHANGES]:
        click.echo(f"  {'removed' if path in report.removed else 'written'}  {path}")
    if len(report.changed) > LISTED_CHANGES:
        click.echo(f"  … and {len(report.changed) - LISTED_CHANGES} more: see manifest.json")
    if any(name in report.changed for name in NGINX_INCLUDES):
        # nginx reads them only when it starts or reloads (systemd's unit reloads it after).
        click.echo(NGINX_MUST_RELOAD)
    return report


@click.command("pull-build")
@click.argument("source")
@dest_option
@with_appcontext
def pull_build_command(source: str, dest: Path | None) -> None:
    """Make the build frozen at SOURCE live here: host:/srv/podcast/var/build, rsync://…/build.

    Prints whether nginx must reload (a changed episodes.map or redirects.conf).
    """
    destination = Path(dest or current_app.config["FREEZE_DIR"])
    try:
        report = pull_build(source, destination)
    except FreezeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"pulled {report.files} files from {report.source_tree} into {destination}")
    if report.nginx_reload:
        click.echo(NGINX_MUST_RELOAD)


def _url(page: Page | None) -> str | None:
    return page.url if page is not None else None
