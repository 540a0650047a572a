"""The WSGI entry point for uWSGI: ``module = webapp.wsgi:application``.

uWSGI imports this once in its master process and then forks the workers,
so everything built here is shared copy-on-write. ``gc.freeze()`` (Python
3.7+) moves every object that exists now into a generation the cyclic
garbage collector never scans: without it, the collector's first pass in each
worker writes to (and so un-shares) nearly every page the master built.
"""
from __future__ import annotations

import gc

from . import create_app

application = create_app()

if application.config["GC_FREEZE"]:
    gc.collect()
    gc.freeze()
