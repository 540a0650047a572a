"""Requests per second through nginx with 1, 2 and 3 app hosts (a measurement, not a check).

    MULTIHOST_THROUGHPUT=1 ./scripts/test tests/multihost -k throughput -s

wrk runs on the client host against the nginx host, whose config is rendered with the first
1, 2, then 3 app hosts as its upstreams (and reloaded), in rounds that alternate the order;
the medians are printed. Beside requests/s, the CPU time all the cluster's processes used
per request (nginx, uWSGI, PgBouncer, PostgreSQL: /proc), which the machine's other users
barely move. Every host shares this machine's 2 cores, so the figures show what the shape
costs and that it holds, not how it scales: on separate machines each app host brings its
own CPUs. deploy/README.md has them.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
from collections import Counter
from pathlib import Path

import pytest

from .cluster import UWSGI_PORT, Cluster

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("MULTIHOST_THROUGHPUT"),
        reason="a measurement of a few minutes: MULTIHOST_THROUGHPUT=1 runs it",
    ),
]

SECONDS = int(os.environ.get("MULTIHOST_THROUGHPUT_SECONDS", "5"))
ROUNDS = int(os.environ.get("MULTIHOST_THROUGHPUT_ROUNDS", "3"))
#: A new search each request: the micro-cache never answers, an app host always does.
SEARCH_SCRIPT = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format(nil, "/search?q=python+" .. counter)
end
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(cluster: Cluster) -> Counter[str]:
    """CPU time used so far by each part of the cluster: nginx, uwsgi, pgbouncer, postgres."""
    used: Counter[str] = Counter()
    for host in cluster.network.hosts:
        if host is cluster.client:  # wrk itself
            continue
        for pid in cluster.network.pids(host):
            try:
                name, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
            except OSError:
                continue
            fields = rest.split()
            part = host.name if host.name in ("nginx", "db") else "uwsgi"
            if part == "db":
                part = "pgbouncer" if name.endswith("(pgbouncer") else "postgres"
            # utime, stime, and those of its children that ended (a recycled uWSGI worker,
            # an old nginx worker, a PostgreSQL backend): nothing lost, nothing counted twice.
            used[part] += sum(int(field) for field in fields[11:15]) / TICKS
    return used


def wrk(cluster: Cluster, path: str, script: Path | None = None) -> tuple[float, Counter[str]]:
    """(requests/s, CPU µs per request of each part) of a SECONDS-long ``wrk -t2 -c32`` run."""
    command = [shutil.which("wrk") or "wrk", "-t2", "-c32", f"-d{SECONDS}s"]
    if script is not None:
        command += ["-s", str(script)]
    before = cpu_seconds(cluster)
    output = cluster.network.run(cluster.client, [*command, cluster.url + path])
    used = cpu_seconds(cluster)
    used.subtract(before)
    assert "Non-2xx or 3xx responses" not in output, output
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    return rate, Counter({part: seconds / requests * 1e6 for part, seconds in used.items()})


def use_app_hosts(cluster: Cluster, count: int) -> None:
    upstreams = [f"{app.host.address}:{UWSGI_PORT}" for app in cluster.apps[:count]]
    cluster.nginx.render(cluster.network, upstreams)
    cluster.nginx.reload()


def test_requests_per_second_with_1_2_and_3_app_hosts(cluster: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "search.lua"
    script.write_text(SEARCH_SCRIPT)
    targets = {"/health": ("/health", None), "/search": ("/", script), "frozen /": ("/", None)}
    runs: dict[tuple[int, str], list[tuple[float, Counter[str]]]] = {}
    try:
        for round_number in range(ROUNDS):
            order = (1, 2, 3) if round_number % 2 == 0 else (3, 2, 1)
            for count in order:
                use_app_hosts(cluster, count)
                wrk(cluster, "/health")  # warm: every worker connected to PgBouncer
                for name, (path, lua) in targets.items():
                    runs.setdefault((count, name), []).append(wrk(cluster, path, lua))
    finally:
        use_app_hosts(cluster, len(cluster.apps))
    parts = ("nginx", "uwsgi", "pgbouncer", "postgres")
    print(f"\nmedians of {ROUNDS} rounds of {SECONDS} s, wrk -t2 -c32 from the client host")
    print("| app hosts | target | req/s | CPU µs per request: " + ", ".join(parts) + " |")
    for count in (1, 2, 3):
        for name in targets:
            rates = [rate for rate, _ in runs[(count, name)]]
            cpu = [
                statistics.median(used[part] for _, used in runs[(count, name)]) for part in parts
            ]
            print(
                f"| {count} | {name} | {statistics.median(rates):,.0f} | "
                + ", ".join(f"{value:,.0f}" for value in cpu)
                + " |"
            )
