"""What uwsgi.ini promises about the workers, checked inside real workers.

The app is tests/stack/probe_wsgi.py (the site plus test-only URLs) under the project's own ini.
"""

from __future__ import annotations

import json

import pytest

from deploy.stack import Stack

from .probe_wsgi import GC_PATH
from .support import free_port, get

pytestmark = pytest.mark.stack


def probe_stack(make_stack) -> Stack:
    """The probe app, which uWSGI also serves on an HTTP port of its own (beside nginx's
    socket), so that a test can ask its workers directly."""
    http = f"127.0.0.1:{free_port()}"
    return make_stack(
        uwsgi_options={"module": "tests.stack.probe_wsgi:application", "http-socket": http}
    )


def gc_state_of_every_worker(stack: Stack) -> dict[int, dict]:
    """Ask the instance's own HTTP port until each of its workers has answered."""
    instance = stack.instances[0]
    expected = set(instance.worker_pids())
    seen: dict[int, dict] = {}
    for _ in range(200):
        status, _, body = get(f"http://{stack.settings.uwsgi_options['http-socket']}{GC_PATH}")
        assert status == 200
        state = json.loads(body)
        seen[state["pid"]] = state
        if expected <= set(seen):
            return {pid: seen[pid] for pid in expected}
    raise AssertionError(f"workers {expected - set(seen)} never answered")


def test_workers_collect_garbage_but_never_scan_the_masters_objects(make_stack) -> None:
    """gc.freeze() in the master before the fork (webapp/wsgi.py); the collector still runs in
    the workers."""
    stack = probe_stack(make_stack)
    for state in gc_state_of_every_worker(stack).values():
        assert state["enabled"] is True
        assert (
            state["frozen"] > 10_000
        )  # Flask, Jinja, psycopg2, the app: all built before the fork
    # Workers forked later (a chain reload, recycling, a respawn) get the same treatment.
    stack.reload(chain=True)
    for state in gc_state_of_every_worker(stack).values():
        assert state["enabled"] is True and state["frozen"] > 10_000


def test_the_listen_backlog_is_the_kernels(make_stack) -> None:
    stack = make_stack()
    log = stack.instances[0].log.read_text()
    with open("/proc/sys/net/core/somaxconn") as somaxconn:
        assert (
            f"your server socket listen backlog is limited to {int(somaxconn.read())} connections"
            in log
        )
