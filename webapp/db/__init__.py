"""The data layer as the Flask app sees it: one backend per app, one session per request.

    from webapp.db import get_session, queries
    episode = queries.episode_by_number(get_session(), 10)

The session borrows a connection on its first query and gives it back when
the app context ends, committing if the request succeeded.

The package, one concept in one place:

- ``__init__`` (this module): the Flask glue, ``init_app``, ``get_database``, ``get_session``.
- ``backends``: SQLite and PostgreSQL behind one interface, pooling, redacted URLs.
- ``schema_sqlite.sql``, ``schema_postgresql.sql``: tables, indexes and triggers.
- ``queries``: every query the site runs (each uses an index: tests/test_query_plans.py).
- ``seed``: deterministic sample episodes; ``commands``: ``flask init-db`` and ``flask seed``.
"""

from __future__ import annotations

from flask import Flask, current_app, g

from ..settings import SettingsError
from .backends import Database, DatabaseUnavailable, Session, open_database


def init_app(app: Flask) -> None:
    # Opening a backend connects to nothing: connections are made in each
    # worker on first use, never in the uWSGI master before it forks.
    try:
        app.extensions["database"] = open_database(
            app.config["DATABASE_URL"],
            pool_size=app.config["DATABASE_POOL_SIZE"],
            connect_timeout=app.config["DATABASE_CONNECT_TIMEOUT"],
        )
    except ValueError as error:
        # A ClickException too: `flask --app webapp …` prints "Error: DATABASE_URL …", no traceback.
        raise SettingsError(str(error)) from None
    app.teardown_appcontext(_end_session)
    # Imported here: the commands use get_database from this module.
    from .commands import init_db_command, seed_command

    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)


def get_database(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["database"]


def get_session() -> Session:
    """This request's session, created on first use."""
    if "db_session" not in g:
        g.db_session = Session(get_database())
    return g.db_session


def _end_session(error: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is None:
        return
    try:
        session.end(commit=error is None)
    except DatabaseUnavailable as failure:
        # The response is on its way (its headers may be sent): raising here
        # would cut its body short. The next request will get its own 503.
        current_app.logger.warning("ending the request's session: %s", failure)
