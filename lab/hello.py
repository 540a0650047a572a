"""A bare WSGI "hello": the ceiling of the machine and the server, without Flask or the site.

    uwsgi --ini deploy/uwsgi/uwsgi.ini --module lab.hello:application

The ceiling experiment (lab/experiments/ceiling.toml) loads it under the same uWSGI
configuration as the site: every route's requests/s as a fraction of it is what the app
costs, the rest is the server, the kernel and the load generator. It answers every path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello\n"


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
