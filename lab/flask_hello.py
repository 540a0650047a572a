"""A minimal Flask app: one view that answers "hello". The floor of any route of the site.

    uwsgi --ini deploy/uwsgi/uwsgi.ini --module lab.flask_hello:application

The routes experiment (lab/experiments/routes.toml) runs it under the same uWSGI
configuration as the site and measures each route's app CPU per request as a multiple
of it: what the site adds to Flask itself (issue 14: no dynamic route above 5×).
lab/hello.py is the bare-WSGI ceiling, without Flask. Like it, this answers every path:
the stack is ready when /health answers.
"""

from __future__ import annotations

from flask import Flask

application = Flask(__name__)


@application.get("/")
@application.get("/<path:path>")
def hello(path: str = "") -> str:
    return "hello"
