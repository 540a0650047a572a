"""Faults under load: what breaks, what is bounded, what does not fail at all.

Each test runs a stack of its own, a bounded background load (threads of keep-alive
clients on loopback, stopping by themselves), breaks one thing and counts failed
requests. The bounds asserted are the ones the configuration guarantees, not timings:

* a uWSGI master killed by SIGKILL is restarted by supervisord, while nginx answers every
  request for a frozen page;
* a uWSGI worker killed by SIGKILL loses at most the one request it was running;
* recycling (max-requests), a graceful reload and a chain reload lose none;
* every request profiled through a graceful reload: no profile lost;
* as shipped, no worker is recycled by its request count, and lifetime recycling
  replaces one worker at a time;
* PostgreSQL stopped: 503 with Retry-After, never a 500 or 502; started again: full
  service from the same uWSGI processes;
* a request slower than harakiri is killed (502) and its worker replaced.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from request_profiler import DirectoryStore, make_token

from deploy.stack import Stack

from .conftest import EPISODES, PROFILER_SECRET, Site, build_site
from .probe_wsgi import SLEEP_PATH
from .support import BackgroundLoad, get, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def varied_path(number: int) -> str:
    """Mostly requests that reach Python: /health is never cached, and every search is a new URL."""
    kind = number % 4
    if kind == 0:
        return "/health"
    if kind == 1:
        return f"/search?q=python+{number}"
    if kind == 2:
        return f"/api/episodes/{number % EPISODES + 1}"
    return "/"  # a frozen page: nginx alone


def workers(stack: Stack, instance: int = 0) -> dict[int, dict]:
    """uWSGI's stats for each worker of one instance, by worker id."""
    return {worker["id"]: worker for worker in stack.instances[instance].stats()["workers"]}


# --- uWSGI stopped: the frozen site stays up ---------------------------------------------


def test_frozen_pages_keep_being_served_with_uwsgi_stopped(make_stack, site: Site) -> None:
    stack = make_stack()
    url = stack.settings.url
    episode = (site.build_dir / "nginx" / "episodes.map").read_text().split(";")[0].split()[1]
    stack.call("stopProcessGroup", "uwsgi")  # supervisorctl stop uwsgi:*
    assert set(stack.pids()) == {"nginx"}
    for path in ["/", "/episodes/", episode, "/episodes/rss", "/static/style.css", "/episodes/2"]:
        status, _, _ = get(url + path)
        assert status in (200, 301), path
    assert get(url + "/no-such-page")[0] == 404
    # What needs Python is unavailable: a 502 from nginx, at once.
    for path in ["/api/episodes/1", "/health", "/search?q=anything"]:
        assert get(url + path)[0] == 502, path
    stack.call("startProcessGroup", "uwsgi")
    assert wait_until(lambda: all(instance.ready() for instance in stack.instances), 60)
    assert get(url + "/api/episodes/1")[0] == 200


def test_a_killed_uwsgi_is_restarted_while_nginx_serves_the_frozen_pages(
    make_stack, site: Site
) -> None:
    """SIGKILL to the uWSGI master (nothing graceful: the OOM killer does this): supervisord
    starts a new one, and nginx answers every request for a frozen page all along."""
    stack = make_stack()
    url, instance = stack.settings.url, stack.instances[0]
    episode = (site.build_dir / "nginx" / "episodes.map").read_text().split(";")[0].split()[1]
    frozen = ["/", "/episodes/", episode, "/episodes/rss", "/static/style.css"]
    master, workers = stack.pids()[instance.name], instance.worker_pids()
    old_workers = [psutil.Process(pid) for pid in workers]

    def new_master_serves() -> bool:
        return stack.pids().get(instance.name, master) != master and instance.ready()

    with BackgroundLoad(
        url, lambda n: frozen[n % len(frozen)], threads=4, max_seconds=60, ok_statuses={200}
    ) as load:
        load.wait_requests(200)
        os.kill(master, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_until(new_master_serves, 30), "supervisord did not restart uWSGI"
        back = time.monotonic() - killed
        load.wait_requests(200)
    assert load.result.failures == [], load.result.summary()
    assert load.result.total >= 400
    # The old workers went with their master (no-orphans), and the app answers again.
    assert not psutil.wait_procs(old_workers, timeout=10)[1]
    assert not set(workers) & set(instance.worker_pids())
    assert get(url + "/health")[0] == 200 and get(url + "/api/episodes/1")[0] == 200
    print(f"uWSGI serving again {back:.1f} s after the SIGKILL; {load.result.summary()}")


# --- A worker killed, workers recycled, reloads ------------------------------------


def test_sigkilled_worker_loses_at_most_its_one_request(make_stack) -> None:
    stack = make_stack()
    kills = 3
    with BackgroundLoad(stack.settings.url, varied_path, threads=6, max_seconds=60) as load:
        for _ in range(kills):
            load.wait_requests(150)
            before = workers(stack)
            victim = before[1]["pid"]
            os.kill(victim, signal.SIGKILL)
            # The master notices and forks a new worker 1.
            assert wait_until(
                lambda victim=victim: workers(stack)[1]["pid"] not in (0, victim), 30
            ), "worker 1 not respawned"
        load.wait_requests(150)
    result = load.result
    # One process serves one request at a time (no threads): a kill can lose that one, never
    # one that waited in the socket's backlog.
    assert len(result.failures) <= kills, result.summary()
    assert all(outcome == 502 for _, _, outcome in result.failures), result.summary()
    assert result.total > 600


def test_worker_recycling_by_max_requests_under_load_loses_nothing(make_stack) -> None:
    # uWSGI never recycles a worker younger than min-worker-lifetime (10 s by default): 1 s here.
    stack = make_stack(
        uwsgi_options={"max-requests": "40", "max-requests-delta": "10", "min-worker-lifetime": "1"}
    )
    first = {wid: worker["pid"] for wid, worker in workers(stack).items()}
    with BackgroundLoad(stack.settings.url, varied_path, threads=6, max_seconds=60) as load:
        # respawn_count starts at 1: every worker recycled at least twice.
        assert wait_until(
            lambda: min(w["respawn_count"] for w in workers(stack).values()) >= 3, 45
        ), "the workers were not recycled"
    result = load.result
    assert result.failures == [], result.summary()
    assert not set(first.values()) & {worker["pid"] for worker in workers(stack).values()}


def test_as_shipped_no_worker_is_recycled_by_its_request_count(make_stack) -> None:
    """Past the request count and min-worker-lifetime at which every worker used to be
    recycled in the same second (docs/tuning.md, "Worker recycling"), none is."""
    stack = make_stack()
    started = time.monotonic()
    with BackgroundLoad(stack.settings.url, lambda n: "/health", threads=6, max_seconds=60) as load:
        load.wait_requests(12_000, timeout=50)
        assert wait_until(lambda: time.monotonic() - started > 12, 15)
    assert load.result.total >= 12_000 and load.result.failures == [], load.result.summary()
    assert [worker["respawn_count"] for worker in workers(stack).values()] == [1, 1]


def test_lifetime_recycling_replaces_one_worker_at_a_time(make_stack) -> None:
    """uwsgi.ini's max-worker-lifetime-delta, scaled down to seconds: each worker id adds
    to the lifetime, so no two workers are replaced in the same second. The periods must
    share no factor (as in uwsgi.ini), or the workers fall back into step at their least
    common multiple: here 5 s and 7 s, in step again only after the test."""
    stack = make_stack(
        uwsgi_options={
            "max-worker-lifetime": "4",
            "max-worker-lifetime-delta": "2",
            "min-worker-lifetime": "1",
        }
    )
    spawns: set[tuple[int, int]] = set()  # (worker id, second it was respawned)

    def record() -> bool:
        now = workers(stack)
        spawns.update(
            (wid, worker["last_spawn"])
            for wid, worker in now.items()
            if worker["respawn_count"] > 1
        )
        return min(worker["respawn_count"] for worker in now.values()) >= 3

    with BackgroundLoad(stack.settings.url, varied_path, threads=4, max_seconds=60) as load:
        assert wait_until(record, 40, interval=0.2), "the workers were not recycled"
    assert load.result.failures == [], load.result.summary()
    seconds = [second for _, second in spawns]
    assert len(spawns) >= 4 and len(set(seconds)) == len(seconds), sorted(spawns)


@pytest.mark.parametrize("chain", [False, True], ids=["graceful-reload", "chain-reload"])
def test_reload_under_load_loses_nothing(make_stack, chain: bool) -> None:
    stack = make_stack(uwsgi_instances=2)
    masters = stack.pids()
    old_workers = {pid for instance in stack.instances for pid in instance.worker_pids()}
    with BackgroundLoad(stack.settings.url, varied_path, threads=6, max_seconds=90) as load:
        load.wait_requests(200)
        stack.reload(chain=chain)  # instance by instance, each waited for; then nginx
        load.wait_requests(200)
    result = load.result
    assert result.failures == [], result.summary()
    # The same masters (a reload, not a restart), every worker new.
    assert stack.pids() == masters
    assert not old_workers & {pid for instance in stack.instances for pid in instance.worker_pids()}


def test_a_reload_under_load_loses_no_profile(make_stack, tmp_path: Path) -> None:
    """A graceful reload amid profiled requests: every profile a client was told of is kept.

    Profiles wait in each worker's queue for its writer thread; a worker stopped by the
    reload stores what is queued before it exits (atexit, which uWSGI runs in a worker
    that stops gracefully).
    """
    profiles = tmp_path / "profiles"
    stack = make_stack(
        environment={"PROFILER_DIR": str(profiles), "PROFILER_MAX_PROFILES": "1000000"}
    )
    url = stack.settings.url
    token = make_token(PROFILER_SECRET, 600)
    old_workers = set(stack.instances[0].worker_pids())
    told: list[str] = []
    failures: list[object] = []
    stop = threading.Event()

    def profile_requests(thread: int) -> None:
        for number in range(5000):  # bounded; stop ends it long before
            if stop.is_set():
                return
            path = f"/api/episodes/{(thread * 7 + number) % EPISODES + 1}"
            try:
                status, headers, _ = get(url + path, {"X-Profile-Token": token})
            except OSError as error:
                failures.append(error)
                continue
            if status != 200 or not headers.get("X-Profile-Id"):
                failures.append((path, status))
            else:
                told.append(headers["X-Profile-Id"])

    clients = [threading.Thread(target=profile_requests, args=(n,)) for n in range(4)]
    for client in clients:
        client.start()
    try:
        assert wait_until(lambda: len(told) >= 200, 60)
        stack.reload()
        count = len(told)
        assert wait_until(lambda: len(told) >= count + 200, 60)
    finally:
        stop.set()
        for client in clients:
            client.join(60)

    assert failures == []
    assert not old_workers & set(stack.instances[0].worker_pids())  # every worker was replaced
    # The new workers store theirs within their batch delay; wait for them, bounded.
    # Each writer's batch is one file: count profiles, not files.
    stored = lambda: {meta["id"] for meta in DirectoryStore(profiles).recent()}  # noqa: E731
    assert wait_until(lambda: set(told) <= stored(), 30), len(set(told) - stored())
    assert len(told) > 400


def test_reload_picks_up_a_new_build_map(make_stack, site: Site, tmp_path: Path) -> None:
    """After a freeze that adds episodes, `reload` makes nginx read the new episodes.map."""
    fresh = build_site(f"sqlite:///{tmp_path}/more.sqlite3", tmp_path / "more")
    stack = make_stack(site_=fresh)
    number = EPISODES + 5
    assert get(stack.settings.url + f"/episodes/{number}")[0] == 404
    from webapp.db import get_database
    from webapp.db.seed import seed
    from webapp.freeze import freeze

    with get_database(fresh.app).session() as session:
        seed(session, EPISODES + 10)
    freeze(fresh.app, fresh.build_dir)
    stack.reload()
    # With uWSGI stopped only nginx can answer: the redirect and the page come from the new build.
    stack.call("stopProcessGroup", "uwsgi")
    status, headers, _ = get(stack.settings.url + f"/episodes/{number}")
    assert status == 301 and headers["Location"].startswith(f"/episodes/{number}/")
    assert get(stack.settings.url + headers["Location"])[0] == 200


def test_sigterm_lets_running_requests_finish(make_stack) -> None:
    """systemd's stop (SIGTERM) is graceful: a request running then still gets its answer."""
    stack = make_stack(uwsgi_options={"module": "tests.stack.probe_wsgi:application"})
    instance = stack.instances[0]
    master = stack.pids()[instance.name]
    outcome: list[int] = []
    request = threading.Thread(
        target=lambda: outcome.append(get(stack.settings.url + f"{SLEEP_PATH}?seconds=2")[0])
    )
    request.start()
    assert wait_until(lambda: any(w["status"] == "busy" for w in workers(stack).values()), 10)
    os.kill(master, signal.SIGTERM)
    request.join(30)
    assert outcome == [200]
    assert wait_until(lambda: not psutil.pid_exists(master), 30)
    assert "graceful shutdown triggered" in instance.log.read_text()


def test_a_rebuild_goes_live_under_load_without_an_error(make_stack, tmp_path: Path) -> None:
    """`flask freeze` swaps the build in one rename; nginx serves the new page once
    open_file_cache rechecks."""
    fresh = build_site(f"sqlite:///{tmp_path}/rebuild.sqlite3", tmp_path / "rebuild")
    stack = make_stack(site_=fresh)
    url = stack.settings.url
    from webapp.db import get_database
    from webapp.freeze import freeze

    with BackgroundLoad(
        url, lambda n: ["/", "/episodes/", "/episodes/rss"][n % 3], threads=4, max_seconds=60
    ) as load:
        load.wait_requests(100)
        with get_database(fresh.app).session() as session:
            session.execute(
                "UPDATE episodes SET title = %s WHERE number = %s",
                ("A title from the rebuild", EPISODES),
            )
        freeze(fresh.app, fresh.build_dir)
        # Bounded wait, not a timing assertion: open_file_cache_valid is 2 s.
        assert wait_until(lambda: b"A title from the rebuild" in get(url + "/")[2], 30)
        load.wait_requests(100)
    assert load.result.failures == [], load.result.summary()


# --- harakiri ----------------------------------------------------------------------


def test_request_slower_than_harakiri_is_killed_and_its_worker_replaced(make_stack) -> None:
    """The real uwsgi.ini with harakiri lowered to 1 s, serving tests/stack/probe_wsgi.py
    (the site + a sleep URL)."""
    stack = make_stack(
        uwsgi_options={"harakiri": "1", "module": "tests.stack.probe_wsgi:application"}
    )
    url = stack.settings.url
    before = {worker["pid"] for worker in workers(stack).values()}
    token = make_token(PROFILER_SECRET, 300)
    # Without harakiri this would answer 200 after 4 s (nginx waits harakiri + 5 s = 6 s).
    status, _, _ = get(url + f"{SLEEP_PATH}?seconds=4&_profile={token}")
    assert status == 502
    after = workers(stack)
    assert before - {worker["pid"] for worker in after.values()}, "no worker was replaced"
    log = stack.instances[0].log.read_text()
    # uWSGI names the killed request, as nginx passed it: the token redacted.
    assert f"GET {SLEEP_PATH}?seconds=4&_profile=[redacted]" in log
    assert token not in log
    assert get(url + "/api/episodes/1")[0] == 200
    # A request within the limit is untouched.
    assert get(url + f"{SLEEP_PATH}?seconds=0.1")[0] == 200


# --- PostgreSQL stopped and started under load ----------------------------------


def test_postgres_outage_under_load(make_stack, private_postgres, tmp_path: Path) -> None:
    site = build_site(private_postgres.url, tmp_path / "pgsite")
    stack = make_stack(site_=site)
    url = stack.settings.url
    pids_before = sorted([*stack.pids().values(), *stack.instances[0].worker_pids()])
    # Only requests that need the database (the frozen pages would not notice the outage).
    load = BackgroundLoad(
        url,
        lambda n: "/health" if n % 2 else f"/search?q=outage+{n}",
        threads=4,
        max_seconds=90,
        ok_statuses=frozenset({200, 503}),
    )
    with load:
        load.wait_requests(100)
        private_postgres.stop()
        answer = wait_until(lambda: (r := get(url + "/health")) and r[0] == 503 and r, 30)
        assert answer, "/health never answered 503 while PostgreSQL was stopped"
        _, headers, body = answer
        assert headers["Retry-After"] and json.loads(body) == {
            "status": "unavailable",
            "database": "unreachable",
        }
        assert get(url + "/search?q=while+down")[0] == 503
        load.wait_requests(100)
        private_postgres.start()
        assert wait_until(lambda: get(url + "/health")[0] == 200, 30), "service did not come back"
        load.wait_requests(100)
    result = load.result
    # Only 200s and 503s: never a 500, 502, a reset, or a body cut short (a failed
    # commit in the request's teardown is logged, not raised into the response).
    assert result.failures == [], result.summary()
    assert result.statuses[503] > 0 and result.statuses[200] > 0
    # After the outage: every request answered again, by the same processes (nothing restarted).
    tail = BackgroundLoad(
        url, lambda n: f"/search?q=after+{n}", threads=4, max_requests=200, max_seconds=60
    )
    with tail:
        tail.wait_requests(200)
    assert tail.result.statuses == {200: 200}, tail.result.summary()
    pids_after = sorted([*stack.pids().values(), *stack.instances[0].worker_pids()])
    assert pids_after == pids_before
