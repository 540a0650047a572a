"""The multi-host cluster (cluster.py), built once for the module's tests and removed after.

It needs root (network namespaces, a UTS namespace per app host), iproute2's ``ip``,
util-linux's ``unshare``, nginx, uWSGI, PgBouncer, rsync and PostgreSQL's server binaries:
without one of them the tests skip with the reason, and fail under REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.settings import find_uwsgi
from tests.conftest import require_binary, require_service
from tests.stack.support import postgres_bindir

from .cluster import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service(os.geteuid() == 0, "network namespaces need root")
    for binary in ("ip", "unshare", "pgbouncer", "rsync", "runuser"):
        require_binary(binary)
    nginx = require_binary("nginx")
    uwsgi = find_uwsgi()
    require_service(uwsgi, "uWSGI is not installed in this environment (pip install uWSGI)")
    bindir = postgres_bindir()
    require_service(bindir, "PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    root: Path = tmp_path_factory.mktemp("multihost")
    cluster = Cluster(root, uwsgi=uwsgi, nginx=nginx, postgres_bindir=bindir)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
