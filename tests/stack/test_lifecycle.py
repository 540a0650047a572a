"""scripts/serve starts the whole stack, and stopping it leaves nothing behind.

These run ``python -m deploy.stack`` (what scripts/serve execs) as a separate process,
the way a person does: in the foreground stopped by Ctrl-C, or detached and stopped
by ``scripts/serve stop`` from another shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from deploy.stack import Stack, StackError, StackSettings
from deploy.stack.settings import DEPLOY_DIR
from deploy.stack.stack import NotRunning

from .conftest import Site
from .support import free_port, get, wait_until

pytestmark = pytest.mark.stack


def serve(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.stack", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def running_pids(run_dir: Path) -> list[int]:
    """The pids of supervisord and of every program it runs (uWSGI masters, nginx)."""
    try:
        stack = Stack.attach(run_dir)
        return [stack.call("getPID"), *stack.pids().values()]
    except NotRunning:
        return []


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:  # not listening yet
        return False


def assert_nothing_left(run_dir: Path, pids: list[int]) -> None:
    assert [pid for pid in pids if psutil.pid_exists(pid)] == []
    left = [p.name for p in run_dir.rglob("*") if p.suffix in (".sock", ".pid", ".fifo")]
    assert left == []


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGINT,), (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)],
    ids=["ctrl-c", "sigterm-then-impatient"],
)
def test_serve_in_the_foreground_stops_cleanly_on_ctrl_c(
    tmp_path: Path, site: Site, stack_binaries, signals: tuple[signal.Signals, ...]
) -> None:
    run_dir, port = tmp_path / "run", free_port()
    process = serve(
        "start",
        "--port",
        str(port),
        "--uwsgi-instances",
        "2",
        "--processes",
        "1",
        "--run-dir",
        str(run_dir),
        "--build-dir",
        str(site.build_dir),
        "--no-freeze",
        env=site.environment,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        # What a person waits for before pressing Ctrl-C.
        assert wait_until(lambda: process.poll() is not None or "serving" in "".join(lines), 60)
        assert process.poll() is None, "".join(lines)
        pids = running_pids(run_dir)
        assert len(pids) == 4  # supervisord, two uWSGI masters, nginx
        status, _, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and body == (site.build_dir / "index.html").read_bytes()
        assert get(f"http://127.0.0.1:{port}/api/episodes/1")[0] == 200
        # What a terminal's Ctrl-C does: SIGINT to scripts/serve (supervisord and its programs are
        # in sessions of their own: scripts/serve shuts them down in order).
        # A second signal while it stops (an impatient Ctrl-C) changes nothing: it still stops
        # everything, in order, and leaves nothing behind.
        for signum in signals:
            process.send_signal(signum)
            time.sleep(0.3)
        process.wait(timeout=60)
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            # supervisord and its programs are in sessions of their own, and outlive the kill:
            # a failed assertion above must not leave a stack running for the rest of the session.
            serve("stop", "--run-dir", str(run_dir), env={}).communicate(timeout=90)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "stopped; nothing left running" in output
    assert_nothing_left(run_dir, pids)


def test_serve_detached_then_stop_from_another_shell(
    tmp_path: Path, site: Site, stack_binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SITE_URL", raising=False)  # serve() passes this environment on
    run_dir, port = tmp_path / "run", free_port()
    common = ["--run-dir", str(run_dir)]
    environment = {name: value for name, value in site.environment.items() if name != "SITE_URL"}
    started = serve(
        "start",
        "--port",
        str(port),
        "--detach",
        "--build-dir",
        str(site.build_dir),
        "--no-freeze",
        *common,
        env=environment,
    )
    output, _ = started.communicate(timeout=90)
    assert started.returncode == 0, output
    pids = running_pids(run_dir)
    try:
        assert len(pids) == 3  # supervisord, a uWSGI master, nginx
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        # No SITE_URL set: the API's absolute links are this server's, on the port it was given.
        _, _, body = get(f"http://127.0.0.1:{port}/api/episodes?per_page=1")
        assert json.loads(body)["links"]["next"].startswith(f"http://127.0.0.1:{port}/api/")
        status = serve("status", *common, env={})
        assert status.wait(30) == 0
        lines = status.stdout.read().splitlines()
        states = dict(line.split()[:2] for line in lines)  # supervisorctl's table
        assert states.keys() == {"nginx", "uwsgi:uwsgi-1"}
        assert set(states.values()) <= {"STARTING", "RUNNING"}  # RUNNING once up for 1 s
        # A second start on the same run directory refuses instead of clobbering the running one.
        again = serve(
            "start",
            "--port",
            str(free_port()),
            "--detach",
            "--no-freeze",
            *common,
            env=site.environment,
        )
        again_output, _ = again.communicate(timeout=60)
        assert again.returncode == 1 and "already running" in again_output
    finally:
        stop = serve("stop", *common, env={})
        stop_output, _ = stop.communicate(timeout=90)
    assert stop.returncode == 0, stop_output
    assert_nothing_left(run_dir, pids)
    assert serve("status", *common, env={}).wait(30) == 4  # LSB's "unknown": no supervisord


def test_uwsgi_alone_serves_the_frozen_files_where_nginx_is_missing(
    tmp_path: Path, site: Site, stack_binaries
) -> None:
    stack = Stack(
        StackSettings(
            run_dir=tmp_path / "run",
            build_dir=site.build_dir,
            port=free_port(),
            environment=site.environment,
            nginx=None,
            uwsgi=stack_binaries["uwsgi"],
        )
    )
    stack.start()
    try:
        pids = list(stack.pids().values())
        url = stack.settings.url
        status, headers, body = get(url + "/static/style.css")
        assert status == 200 and body == (site.build_dir / "static/style.css").read_bytes()
        status, _, body = get(url + "/")
        assert status == 200 and body == (site.build_dir / "index.html").read_bytes()
        status, headers, _ = get(url + "/static/style.css", {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert get(url + "/api/episodes/2")[0] == 200
        assert get(url + "/episodes/rss")[0] == 200
    finally:
        stack.stop()
    assert_nothing_left(stack.run_dir, pids)


def test_a_checkout_whose_path_has_a_space_serves(
    tmp_path: Path, site: Site, stack_binaries
) -> None:
    """A home directory's "My Site" or an accented name: nginx takes each path as one word
    (it read "/tmp/my site" as two arguments and refused to start)."""
    home = tmp_path / "my site ü"
    build = shutil.copytree(site.build_dir, home / "bûild é", symlinks=False)
    stack = Stack(
        StackSettings(
            run_dir=home / "run",
            build_dir=build,
            port=free_port(),
            environment=site.environment,
            nginx=stack_binaries["nginx"],
            uwsgi=stack_binaries["uwsgi"],
        )
    )
    stack.start()
    try:
        pids = list(stack.pids().values())
        status, headers, body = get(stack.settings.url + "/")
        assert status == 200 and body == (build / "index.html").read_bytes()
        assert "X-Cache-Status" not in headers  # from the build, by nginx
        assert get(stack.settings.url + "/api/episodes/2")[0] == 200  # through the socket
    finally:
        stack.stop()
    assert_nothing_left(stack.run_dir, pids)


def test_production_render_passes_nginx_t(tmp_path: Path, certificate, stack_binaries) -> None:
    """`scripts/serve render` of deploy/nginx/production.toml, its paths moved to tmp, is a
    complete, valid nginx config."""
    out, var = tmp_path / "etc-nginx", tmp_path / "var"
    (var / "tmp").mkdir(parents=True)
    # The build is a symlink each freeze (or pull-build) swaps: nginx's root must stay the link.
    build = tmp_path / "build"
    (tmp_path / "build-1").mkdir()
    build.symlink_to(tmp_path / "build-1")
    values = tomllib.loads((DEPLOY_DIR / "nginx" / "production.toml").read_text())
    assert values["user"] == "www-data" and values["pid_file"] == "/run/nginx.pid"
    values.update(
        build_dir=str(build),
        upstreams=["unix:/run/podcast/uwsgi.sock", "10.0.0.6:3031"],
        http_listen=f"127.0.0.1:{free_port()}",
        https_listen=f"127.0.0.1:{free_port()}",
        certificate=str(certificate[0]),
        certificate_key=str(certificate[1]),
        pid_file=str(var / "nginx.pid"),
        error_log=str(var / "error.log"),
        access_log=str(var / "access.log"),
        temp_dir=str(var / "tmp"),
        cache_dir=str(var / "cache"),
    )
    if os.geteuid() == 0:  # nginx -t as root checks that its workers' user exists
        values["user"] = "root"
    (tmp_path / "nginx.toml").write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    )
    result = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "render", tmp_path / "nginx.toml", "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    conf = (out / "nginx.conf").read_text()
    assert 'server "unix:/run/podcast/uwsgi.sock"' in conf and 'server "10.0.0.6:3031"' in conf
    assert "max-age=63072000" in conf  # HSTS in production
    assert "return 301 https://$server_name$request_uri;" in conf  # not the client's Host
    assert "limit_conn podcast_address 64;" in conf
    assert "open_file_cache_valid 10s;" in conf and "rate=20r/s" in conf
    assert f'\nroot "{build}";' in (out / "site.conf").read_text()
    nginx = [stack_binaries["nginx"], "-t", "-p", f"{out}/", "-c", out / "nginx.conf"]
    check = subprocess.run(
        [*nginx, "-e", var / "error.log"], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr


def test_a_start_on_a_taken_port_fails_and_leaves_nothing(
    tmp_path: Path, site: Site, stack_binaries
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    stack = Stack(
        StackSettings(
            run_dir=tmp_path / "run",
            build_dir=site.build_dir,
            port=holder.getsockname()[1],
            environment=site.environment,
            nginx=stack_binaries["nginx"],
            uwsgi=stack_binaries["uwsgi"],
            uwsgi_options={"processes": "1"},
            start_timeout=30,
        )
    )
    try:
        # Seen between two attempts ("exited with status 1 (BACKOFF ...)") or after the restart
        # ("exited and was restarted": not "status 0 (STARTING)", the new attempt's).
        with pytest.raises(StackError, match="nginx exited (with status [1-9]|and was)") as failure:
            stack.start()
        assert "Address already in use" in str(failure.value)  # the end of nginx's log
    finally:
        holder.close()
    # start() stopped what it had started: no program, no pid file, socket or FIFO.
    with pytest.raises(NotRunning):
        stack.call("getPID")
    assert stack.leftovers() == []
