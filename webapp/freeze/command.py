"""``flask --app webapp freeze [--dest DIR]``: the site as static files for nginx."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from .build import SiteBuild
from .output import FreezeError
from .site import Page

#: Up to this many changed files are listed after the summary; manifest.json has them all.
LISTED_CHANGES = 20


@click.command("freeze")
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    help="Where nginx serves the site from; default: the FREEZE_DIR setting (var/build).",
)
@with_appcontext
def freeze_command(dest: Path | None) -> None:
    """Freeze /, /episodes/, every episode, the feed, the 404 page and static files.

    Only pages whose data, templates or code changed are rendered; files whose
    bytes did not change keep their modification time. The new build goes live
    in one atomic rename, and manifest.json in it lists what changed.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with SiteBuild(app, dest) as build:
            with click.progressbar(build.pending, label="Freezing", item_show_func=_url) as pages:
                for page in pages:
                    build.render(page)
            report = build.commit()
    except FreezeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.summary())
    for path in report.changed[:LISTED_CHANGES]:
        click.echo(f"  {'removed' if path in report.removed else 'written'}  {path}")
    if len(report.changed) > LISTED_CHANGES:
        click.echo(f"  … and {len(report.changed) - LISTED_CHANGES} more: see manifest.json")


def _url(page: Page | None) -> str | None:
    return page.url if page is not None else None
