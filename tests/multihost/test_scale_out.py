"""deploy/README.md's scale-out section, run: three app hosts behind one nginx, PgBouncer in
front of one PostgreSQL, one list of profiles, one frozen build (cluster.py builds it).

Under a bounded load from the client host through nginx (threads of keep-alive clients,
stopping by themselves), the tests break one thing at a time and count failed requests:

* every process of one app host SIGKILLed: not one GET fails (nginx tries the next
  upstream), and the host serves again once restarted;
* a rolling reload of every app host: not one request fails;
* PostgreSQL restarted behind PgBouncer: 503s only while it is down, then every request
  answered by the same uWSGI processes;
* a freeze on app1, pulled by the nginx host: live with no request failing.

And the shape's promises: PostgreSQL sees at most PgBouncer's pool while more clients than it
allows are connected; session startup options are refused loudly; the profiler's viewer on
every host lists every host's profiles, each with its host name.
"""

from __future__ import annotations

import errno
import re
import socket
import time

import psycopg2
import pytest
from request_profiler import make_token

# Mostly requests that reach an app host: /health, a new search each time, the API; and "/".
from tests.stack.test_faults import varied_path

from .cluster import (
    APP_HOSTS,
    EPISODES,
    MAX_CONNECTIONS,
    PGBOUNCER_PORT,
    POOL_SIZE,
    PROFILER_SECRET,
    SUPERUSER_RESERVED,
    Cluster,
    address,
    wait_for,
)
from .network import ip

pytestmark = [pytest.mark.stack, pytest.mark.slow]

#: Seconds a request answered just after PostgreSQL came back may have started before it.
GRACE = 1.0


def test_no_host_has_a_route_out_of_the_test_network(cluster: Cluster) -> None:
    """The hosts reach each other and nothing else: the load stays inside the namespaces."""
    for host in cluster.network.hosts:
        routes = ip("-n", host.namespace, "route", "show").split("\n")
        assert [route.split()[0] for route in routes if route] in ([], ["10.77.0.0/24"]), routes
    with cluster.network.entered(cluster.client):
        with pytest.raises(OSError) as failure:
            socket.create_connection(("198.51.100.1", 80), timeout=2)  # TEST-NET-2
    assert failure.value.errno == errno.ENETUNREACH


def test_every_app_host_serves_through_nginx(cluster: Cluster) -> None:
    before = {app.name: app.requests_served() for app in cluster.apps}
    for _ in range(30):
        status, _, body = cluster.get("/health")
        assert status == 200, body
    wait_for(
        lambda: all(app.requests_served() > before[app.name] for app in cluster.apps),
        10,
        "not every app host served /health",
    )


def test_an_app_host_killed_under_load_loses_no_request_and_rejoins(cluster: Cluster) -> None:
    app2 = cluster.apps[1]
    pids = app2.pids()
    with cluster.load(varied_path, threads=6, max_seconds=60) as load:
        load.wait_requests(200)
        # Every process of the host, master and workers at once: a machine that died.
        killed = cluster.network.kill_all(app2.host)
        assert set(pids) <= set(killed)
        load.wait_requests(300)  # served by app1 and app3 alone
        assert app2.requests_served() == 0
        app2.start(cluster.network, cluster.uwsgi)
        # nginx leaves a failed upstream alone for fail_timeout (5 s), then tries it again.
        wait_for(lambda: app2.requests_served() > 0, 30, "app2 did not rejoin")
        load.wait_requests(200)
    result = load.result
    assert result.failures == [], result.summary()
    assert result.total > 700


def test_a_rolling_reload_loses_no_request(cluster: Cluster) -> None:
    masters = {app.name: app.master_pid() for app in cluster.apps}
    old_workers = {pid for app in cluster.apps for pid in app.instance.worker_pids()}
    with cluster.load(varied_path, threads=6, max_seconds=90) as load:
        load.wait_requests(200)
        for app in cluster.apps:  # one host at a time, each waited for
            app.reload()
            load.wait_requests(100)
    result = load.result
    assert result.failures == [], result.summary()
    # Reloaded, not restarted: the same masters, every worker new.
    assert {app.name: app.master_pid() for app in cluster.apps} == masters
    assert not old_workers & {pid for app in cluster.apps for pid in app.instance.worker_pids()}


def test_postgresql_restarted_behind_pgbouncer_gives_503s_only_while_it_is_down(
    cluster: Cluster,
) -> None:
    pids_before = cluster.app_pids()
    load = cluster.load(
        lambda n: "/health" if n % 2 else f"/search?q=outage+{n}",
        threads=4,
        max_seconds=120,
        ok_statuses=frozenset({200}),  # so that every 503 is recorded with its time
    )
    with load:
        load.wait_requests(100)
        stopped_at = load.elapsed()
        cluster.postgres.stop()
        wait_for(lambda: cluster.get("/health")[0] == 503, 30, "no 503 while PostgreSQL was down")
        load.wait_requests(200)
        cluster.postgres.start()
        started_at = load.elapsed()
        wait_for(lambda: cluster.get("/health")[0] == 200, 30, "service did not come back")
        back_at = load.elapsed()
        load.wait_requests(200)
    failures = load.result.failures
    assert failures and {outcome for _, _, outcome in failures} == {503}, load.result.summary()
    assert all(stopped_at <= at <= back_at + GRACE for at, _, _ in failures), failures
    print(
        f"\nPostgreSQL down {started_at - stopped_at:.1f} s; back to /health 200 through PgBouncer"
        f" {back_at - started_at:.2f} s after its start; {load.result.summary()}"
    )
    # Full service, from the very same processes: no worker was restarted to reconnect.
    tail = cluster.load(lambda n: f"/search?q=after+{n}", threads=4, max_requests=200)
    with tail:
        tail.wait_requests(200)
    assert tail.result.statuses == {200: 200}, tail.result.summary()
    assert cluster.app_pids() == pids_before


def test_pgbouncer_holds_more_clients_than_postgresql_allows_on_a_few_server_connections(
    cluster: Cluster,
) -> None:
    allowed = MAX_CONNECTIONS - SUPERUSER_RESERVED  # what PostgreSQL accepts from the app's role
    servers, clients = [], []
    console = f"host={address('db')} port={PGBOUNCER_PORT} dbname=pgbouncer user=podcast"
    with cluster.load(varied_path, threads=8, max_seconds=60) as load:
        for _ in range(10):
            load.wait_requests(60)
            with cluster.admin() as admin, admin.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'podcast'")
                servers.append(cursor.fetchone()[0])
            with cluster.network.entered(cluster.client):
                pgbouncer = psycopg2.connect(console, password=cluster.password)
            pgbouncer.autocommit = True  # its console runs no transactions
            with pgbouncer.cursor() as cursor:
                cursor.execute("SHOW CLIENTS")
                columns = [column[0] for column in cursor.description]
                rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            pgbouncer.close()
            clients.append(sum(1 for row in rows if row["database"] == "podcast"))
    assert load.result.failures == [], load.result.summary()
    assert max(servers) <= POOL_SIZE, servers
    assert max(clients) > allowed, (clients, allowed)
    print(f"\nserver connections {max(servers)} (pool {POOL_SIZE}, PostgreSQL allows {allowed});"
          f" client connections up to {max(clients)}")  # fmt: skip


def test_pgbouncer_refuses_session_options_instead_of_ignoring_them(cluster: Cluster) -> None:
    """A URL that sets the session's search_path (as the tests' per-schema URLs do) would run
    in the wrong schema if PgBouncer dropped it; it is refused at connect instead."""
    with cluster.network.entered(cluster.client):
        with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter"):
            psycopg2.connect(cluster.database_url + "?options=-c%20search_path%3Dother")
        # The app's own connections send none: the same URL without it works.
        psycopg2.connect(cluster.database_url).close()


def served_by(cluster: Cluster, request) -> tuple[object, str]:
    """Send ``request()`` (nothing else is running) and find the app host that answered it."""
    before = {app.name: app.requests_served() for app in cluster.apps}
    answer = request()
    changed = wait_for(
        lambda: [app.name for app in cluster.apps if app.requests_served() > before[app.name]],
        5,
        "no app host counted the request",
    )
    assert len(changed) == 1, changed
    return answer, changed[0]


def test_the_viewer_on_every_host_lists_the_profiles_of_every_host(cluster: Cluster) -> None:
    token = {"X-Profile-Token": make_token(PROFILER_SECRET, 600)}
    profiled = {}
    for n in range(30):  # least_conn, one request at a time: the hosts take turns
        (status, headers, _), host = served_by(cluster, lambda n=n: cluster.get(f"/?n={n}", token))
        assert status == 200
        profiled[headers["X-Profile-Id"]] = host
        if set(profiled.values()) == set(APP_HOSTS):
            break
    assert set(profiled.values()) == set(APP_HOSTS)
    # Each process's writer thread stores its profiles within a second or so (request_profiler's
    # writer), so a viewer may list a profile a moment after it was served: polled, bounded.
    listed_by: set[str] = set()
    missing: dict[str, list[str]] = {}
    deadline = time.monotonic() + 20
    while listed_by != set(APP_HOSTS) and time.monotonic() < deadline:
        (status, _, body), host = served_by(cluster, lambda: cluster.get("/_profiler/", token))
        assert status == 200
        page = body.decode()
        # Each profile's row: its link, then the host that served it.
        missing[host] = [
            f"{served}'s {profile_id}"
            for profile_id, served in profiled.items()
            if not re.search(rf'{profile_id}">[^<]+</a></td><td>{served}</td>', page)
        ]
        if not missing[host]:
            listed_by.add(host)
        else:
            time.sleep(0.2)
    if listed_by != set(APP_HOSTS):
        print(cluster.diagnostics())  # in full under "Captured stdout", which pytest never cuts
    assert listed_by == set(APP_HOSTS), missing


def test_a_freeze_on_one_app_host_goes_live_on_the_nginx_host_under_load(
    cluster: Cluster,
) -> None:
    title = "Scaled out: a title from the rebuild"
    app1 = cluster.apps[0]
    pages = ["/", "/episodes/", "/episodes/rss", "/static/style.css"]
    with cluster.load(lambda n: pages[n % len(pages)], threads=4, max_seconds=90) as load:
        load.wait_requests(100)
        with cluster.admin() as admin, admin.cursor() as cursor:
            cursor.execute("UPDATE episodes SET title = %s WHERE number = %s", (title, EPISODES))
        cluster.freeze_on(app1)  # once, on one app host
        cluster.pull_build(app1)  # the nginx host takes it: rsync, check, one rename
        cluster.nginx.reload()  # what podcast-pull-build.service does next
        wait_for(lambda: title in cluster.get("/")[2].decode(), 30, "the new build is not served")
        load.wait_requests(100)
    assert load.result.failures == [], load.result.summary()
    built = app1.root / "var" / "build"
    for name in ("index.html", "episodes/rss.xml", "episodes/index.html.gz"):
        assert (cluster.nginx.build / name).read_bytes() == (built / name).read_bytes(), name
