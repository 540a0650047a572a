"""The WSGI entry point for uWSGI: ``module = webapp.wsgi:application``.

uWSGI imports this once in its master process and then forks the workers
(no ``lazy-apps``), so everything built here is shared copy-on-write. Python's
cyclic garbage collector would un-share it: a collection writes to the header
of every object it scans, and so copies every page the master built into each
worker. CPython's documented recipe (``gc.freeze``) avoids it:

1. ``gc.disable()`` early in the parent, so no collection frees objects in the
   middle of the heap while the app is built (the holes would be filled by the
   workers' own allocations, copying those pages too);
2. ``gc.freeze()`` just before the fork: every object that exists now moves to
   a permanent generation that collections never scan;
3. ``gc.enable()`` early in each worker: its own garbage is collected as usual.

Measured in deploy/README.md. ``GC_FREEZE=0`` turns it off. Outside uWSGI
(tests, ``flask run``) nothing forks and the collector is simply back on.
"""
from __future__ import annotations

import gc

from .settings import load_settings

GC_FREEZE = load_settings()["GC_FREEZE"]

if GC_FREEZE:
    # Import-time garbage goes now, before anything that is to be shared is allocated.
    gc.collect()
    gc.disable()

from . import create_app  # noqa: E402  (after gc.disable: the app is built with the collector off)

application = create_app()


def _enable_gc_after_fork() -> None:
    """Turn the collector back on in every worker; at once if nothing is going to fork."""
    try:
        import uwsgi  # only importable inside uWSGI
    except ImportError:
        gc.enable()
        return
    if uwsgi.worker_id() != 0:
        # lazy-apps: this is a worker already, loading its own copy; nothing is shared to protect.
        gc.enable()
        return
    # uWSGI's own post-fork hook runs in each worker (and each respawned one) right after the fork.
    from uwsgidecorators import postfork

    postfork(gc.enable)


if GC_FREEZE:
    gc.freeze()
    _enable_gc_after_fork()
