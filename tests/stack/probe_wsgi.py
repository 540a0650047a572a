"""The site plus two test-only URLs, served by the real uwsgi.ini in the fault tests.

Never deployed.

uWSGI runs it with the project's own uwsgi.ini
(``UWSGI_MODULE=tests.stack.probe_wsgi:application``),
so what is tested is the real configuration. The app itself gets no test routes: this wrapper
answers three URLs under /api/ (a prefix nginx sends to uWSGI) and hands everything else to the
site:

    /api/__test/sleep?seconds=N   sleeps, then answers 200: a request slower than harakiri
    /api/__test/gc                this worker's garbage collector: enabled? objects frozen?
    /api/__test/body              reads the request body whole (no route of the site reads one)
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from webapp.wsgi import application as site

SLEEP_PATH = "/api/__test/sleep"
GC_PATH = "/api/__test/gc"
BODY_PATH = "/api/__test/body"


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO")
    if path == SLEEP_PATH:
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        time.sleep(seconds)
        body = b"slept\n"
    elif path == BODY_PATH:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = b"%d\n" % len(environ["wsgi.input"].read(length))
    elif path == GC_PATH:
        body = json.dumps(
            {"pid": os.getpid(), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
        ).encode()
    else:
        return site(environ, start_response)
    # Never micro-cached: each answer is about one worker at one moment.
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
    return [body]
