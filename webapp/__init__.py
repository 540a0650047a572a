"""A podcast site built to be fast, and to show how.

    from webapp import create_app
    app = create_app()                                   # settings from the environment
    app = create_app({"DATABASE_URL": "sqlite:////tmp/t.db"})   # or overridden, as tests do

Run it with ``flask --app webapp run`` or, as deployed, under uWSGI
(``webapp.wsgi:application``, see deploy/uwsgi/uwsgi.ini).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from . import cors, db, errors
from .blueprints import api, feed, pages, podcast
from .freeze import freeze_command, pull_build_command
from .params import CanonicalInteger, html_value, page_url
from .profiler import install_profiler
from .same_as_nginx import SameAsNginx
from .settings import load_settings
from .show_notes import show_notes_html

#: What other origins may read (cors.py): the API, the feed, transcripts and chapters.
READABLE_ANYWHERE = r"/api/|/episodes/rss$|/episodes/[0-9]+/(?:transcript\.html|chapters\.json)$"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` overrides settings by their environment variable names."""
    app = Flask(__name__)
    app.config.update(load_settings(config, default_var_dir=app.instance_path))
    # Flask's JSON responses stay compact: the API is read by programs.
    json_provider = DefaultJSONProvider(app)
    json_provider.compact = True
    app.json = json_provider

    # Before any route is added: the rules take their converters when they are.
    app.url_map.converters["int"] = CanonicalInteger
    # Before the first template compiles: Jinja builds finalize into each template's code.
    app.jinja_options = {**app.jinja_options, "finalize": html_value}
    app.add_template_filter(show_notes_html)
    app.add_template_filter(page_url)
    db.init_app(app)
    errors.init_app(app)
    cors.init_app(app, READABLE_ANYWHERE)
    app.cli.add_command(freeze_command)
    app.cli.add_command(pull_build_command)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(feed.blueprint)
    app.register_blueprint(podcast.blueprint)
    app.register_blueprint(api.blueprint, url_prefix="/api")
    # What nginx decides before any location: the app answers alike where it answers alone.
    app.wsgi_app = SameAsNginx(app.wsgi_app, READABLE_ANYWHERE)  # type: ignore[method-assign]
    # Last, so the profiler wraps everything the app does, from the first byte.
    install_profiler(app)
    return app
