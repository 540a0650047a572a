"""Requests per second through nginx with 1, 2 and 3 app hosts (a measurement, not a check).

    MULTIHOST_THROUGHPUT=1 ./scripts/test tests/multihost -k throughput -s

wrk runs on the client host against the nginx host, whose config is rendered with the first
1, 2, then 3 app hosts as its upstreams (and reloaded). Every host shares this machine's
CPUs, so the figures show what the shape costs and that it holds under load, not how it
scales: on separate machines each app host brings its own CPUs. deploy/README.md has them.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from .cluster import UWSGI_PORT, Cluster

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("MULTIHOST_THROUGHPUT"),
        reason="a measurement of a minute or two: MULTIHOST_THROUGHPUT=1 runs it",
    ),
]

SECONDS = int(os.environ.get("MULTIHOST_THROUGHPUT_SECONDS", "10"))
#: A new search each request: the micro-cache never answers, an app host always does.
SEARCH_SCRIPT = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format(nil, "/search?q=python+" .. counter)
end
"""


def wrk(cluster: Cluster, path: str, script: str | None = None) -> tuple[float, int]:
    """(requests/s, responses that were not 2xx/3xx) of a SECONDS-long wrk -t2 -c32 run."""
    command = [shutil.which("wrk") or "wrk", "-t2", "-c32", f"-d{SECONDS}s"]
    if script is not None:
        command += ["-s", script]
    output = cluster.network.run(cluster.client, [*command, cluster.url + path])
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rate, int(errors[1]) if errors else 0


def test_requests_per_second_with_1_2_and_3_app_hosts(cluster: Cluster, tmp_path) -> None:
    script = tmp_path / "search.lua"
    script.write_text(SEARCH_SCRIPT)
    rows = []
    try:
        for count in (1, 2, 3):
            upstreams = [f"{app.host.address}:{UWSGI_PORT}" for app in cluster.apps[:count]]
            cluster.nginx.render(cluster.network, upstreams)
            cluster.nginx.reload()
            wrk(cluster, "/health")  # warm: every worker connected to PgBouncer
            health, health_errors = wrk(cluster, "/health")
            search, search_errors = wrk(cluster, "/", str(script))
            frozen, _ = wrk(cluster, "/")
            assert health_errors == search_errors == 0
            rows.append((count, health, search, frozen))
    finally:
        cluster.nginx.render(
            cluster.network, [f"{app.host.address}:{UWSGI_PORT}" for app in cluster.apps]
        )
        cluster.nginx.reload()
    print(f"\n| app hosts | /health req/s | /search req/s | frozen / req/s |  ({SECONDS} s each)")
    for count, health, search, frozen in rows:
        print(f"| {count} | {health:,.0f} | {search:,.0f} | {frozen:,.0f} |")
