"""The WSGI entry point for uWSGI: ``module = webapp.wsgi:application``.

uWSGI imports this once in its master process and then forks the workers
(no ``lazy-apps``), so everything built here is shared copy-on-write. ``gc.freeze()``
(Python 3.7+) moves every object that exists now into a generation the cyclic
garbage collector never scans: without it, the collector's passes in each
worker write to the header of every object the master built, and so copy
(un-share) the pages they live on. The collector itself stays on in the workers
for their own garbage.

The freeze cuts each worker's private memory and raises its shared share;
CPython's fuller recipe (``gc.disable()`` before the app is built,
``gc.enable()`` in each worker after the fork) measured no better, so this stays
the simple version. The figures are in deploy/README.md. ``GC_FREEZE=0`` turns
it off.
"""

from __future__ import annotations

import gc

from . import create_app

application = create_app()

if application.config["GC_FREEZE"]:
    # The import-time garbage goes first, so what is frozen is what the workers actually share.
    gc.collect()
    gc.freeze()
