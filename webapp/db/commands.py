"""``flask --app webapp …`` commands: init-db, seed."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from . import get_database
from .backends import DatabaseUnavailable, redact_url
from .seed import seed as seed_episodes

#: Below this many episodes seeding is instant and a progress bar is noise.
PROGRESS_BAR_THRESHOLD = 200


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables and indexes (safe to run again)."""
    database = get_database()
    try:
        database.init_schema()
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Schema ready in {redact_url(database.url)}")


@click.command("seed")
@click.option(
    "--episodes",
    default=600,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Episodes 1..N to make sure exist.",
)
@with_appcontext
def seed_command(episodes: int) -> None:
    """Add deterministic sample episodes (existing ones are left alone)."""
    database = get_database()
    try:
        database.init_schema()
        with database.session() as session:
            if episodes >= PROGRESS_BAR_THRESHOLD:
                with click.progressbar(length=episodes, label="Seeding episodes") as bar:
                    inserted = seed_episodes(session, episodes, progress=bar.update)
            else:
                inserted = seed_episodes(session, episodes)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{inserted} episodes added ({episodes - inserted} were already there)")
