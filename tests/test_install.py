"""A regular install works: no checkout, no editable install, nothing from the source tree.

A new team's deploy is ``pip install ./profiling .`` into a virtualenv, then the ``flask``
commands and uWSGI from some other directory. These tests do exactly that in a fresh venv
(pip's cache keeps them to a few seconds after the first run), from a copy of the sources,
so the checkout gets no ``build/`` directory and nothing can be imported from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.stack.support import free_port, uwsgi_alone_environment

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Episodes seeded into the installed site: enough for every kind of page, quick to freeze.
EPISODES = 40
#: What a copy of the checkout leaves out: local state, caches, build output.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".nox",
    "var",
    "instance",
    "build",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".benchmarks",
    ".hypothesis",
)


def copy_sources(destination: Path) -> Path:
    """The checkout's files as a new team would clone them."""
    shutil.copytree(PROJECT_ROOT, destination, ignore=NOT_SOURCES, symlinks=True)
    return destination


def make_venv(path: Path) -> Path:
    """A fresh virtualenv with no packages; returns its bin/ directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin"


def pip_install(bin_dir: Path, *requirements: str, cwd: Path) -> None:
    # The user's pip configuration and cache (PIP_* variables, pip.conf) apply, as they
    # would for anyone; only this process's virtualenv and import path must not leak in.
    environ = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *requirements],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def installed(bin_dir: Path) -> set[str]:
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {package["name"].lower() for package in json.loads(done.stdout)}


def clean_environ(bin_dir: Path, **settings: str) -> dict[str, str]:
    """Only what a service manager would set: no setting of the test run leaks in."""
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        **settings,
    }


def run(bin_dir: Path, *command: str, cwd: Path, env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [str(bin_dir / command[0]), *command[1:]],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def python(bin_dir: Path, code: str, cwd: Path, env: Mapping[str, str]) -> str:
    return run(bin_dir, "python", "-c", code, cwd=cwd, env=env).strip()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"uWSGI exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            fetch(url)
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"uWSGI did not answer within 60 s:\n{log.read_text()[-3000:]}")


def test_a_regular_install_inits_seeds_freezes_and_serves_under_uwsgi(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "checkout")
    bin_dir = make_venv(tmp_path / "venv")
    pip_install(bin_dir, "./profiling", ".", cwd=sources)
    shutil.rmtree(sources)  # nothing may come from the source tree from here on
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    var_dir = tmp_path / "site-var"
    env = clean_environ(bin_dir, VAR_DIR=str(var_dir), SITE_URL="https://podcast.test")

    # The site, and only the site: the checkout's tools are not installed with it.
    purelib = python(
        bin_dir, "import sysconfig; print(sysconfig.get_path('purelib'))", elsewhere, env
    )
    assert python(bin_dir, "import webapp; print(webapp.__file__)", elsewhere, env) == (
        f"{purelib}/webapp/__init__.py"
    )
    for tool in ("lab", "deploy.stack", "tests"):
        probe = f"import importlib.util as u; print(u.find_spec({tool.split('.')[0]!r}))"
        assert python(bin_dir, probe, elsewhere, env) == "None", f"{tool} was installed"

    flask = ("flask", "--app", "webapp")
    assert "Schema ready" in run(bin_dir, *flask, "init-db", cwd=elsewhere, env=env)
    seeded = run(bin_dir, *flask, "seed", "--episodes", str(EPISODES), cwd=elsewhere, env=env)
    assert f"{EPISODES} episodes added" in seeded
    run(bin_dir, *flask, "freeze", cwd=elsewhere, env=env)
    build = var_dir / "build"
    for page in ("index.html", "episodes/index.html", "episodes/rss.xml", "episodes/rss.xml.gz"):
        assert (build / page).is_file(), page
    assert sorted(path.name for path in elsewhere.iterdir()) == []  # nothing written to the cwd

    # Served as deployed: the project's uwsgi.ini, its run-time files under a directory of the
    # test's, and an HTTP socket on a port the OS picked instead of the unix socket nginx uses.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    log = run_dir / "uwsgi.log"
    uwsgi_env = {**env, **uwsgi_alone_environment(run_dir, port)}
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [str(bin_dir / "uwsgi"), "--ini", str(PROJECT_ROOT / "deploy/uwsgi/uwsgi.ini")],
            cwd=elsewhere,
            env=uwsgi_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/health", server, log)
        status, body = fetch(base + "/health")
        assert (status, json.loads(body)) == (
            200,
            {"status": "ok", "database": "ok", "episodes": EPISODES},
        )
        status, body = fetch(base + "/")
        assert status == 200 and b"</html>" in body
        status, body = fetch(base + f"/episodes/{EPISODES}")
        assert status == 200 and f"#{EPISODES}".encode() in body
        status, body = fetch(base + "/api/episodes")
        assert status == 200 and json.loads(body)["episodes"]
        status, body = fetch(base + "/episodes/rss")
        assert status == 200 and body.count(b"<item>") == EPISODES
        assert fetch(base + "/no-such-page")[0] == 404
    finally:
        server.send_signal(signal.SIGTERM)  # die-on-term: a graceful stop
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()[-3000:]

    # Without VAR_DIR the site keeps its files in Flask's instance folder: under the venv's
    # prefix, never inside site-packages.
    default_var_dir = python(
        bin_dir,
        "from webapp import create_app; app = create_app(); "
        "print(app.config['VAR_DIR'] == app.instance_path, app.config['VAR_DIR'])",
        elsewhere,
        clean_environ(bin_dir),
    )
    same, path = default_var_dir.split(" ", 1)
    assert same == "True"
    assert not Path(path).is_relative_to(purelib)
    assert Path(path) == tmp_path / "venv" / "var" / "webapp-instance"


def test_the_profiler_installs_alone_and_profiles_a_bare_wsgi_app(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "checkout")
    bin_dir = make_venv(tmp_path / "venv")
    pip_install(bin_dir, "./profiling", cwd=sources)
    shutil.rmtree(sources)

    packages = installed(bin_dir)
    assert "request-profiler" in packages
    assert not packages & {"flask", "werkzeug", "jinja2", "click"}, packages

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = tmp_path / "profiles"
    app = f"""
import json
from wsgiref.util import setup_testing_defaults
from request_profiler import DirectoryStore, ProfilerMiddleware

def bare_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [sum(range(10_000)).to_bytes(8, "big")]

middleware = ProfilerMiddleware(
    bare_app, secret="s3cret-for-the-test-of-at-least-32-bytes", directory={str(store)!r}
)
environ = {{"PATH_INFO": "/work", "HTTP_X_PROFILE_TOKEN": middleware.make_token(60)}}
setup_testing_defaults(environ)
response = {{}}
body = middleware(environ, lambda status, headers, exc_info=None: response.update(
    status=status, headers=dict(headers)))
chunks = list(body)
body.close()
middleware.flush()  # profiles are stored by the writer's thread
print(json.dumps({{
    "status": response["status"],
    "profile_id": response["headers"].get("X-Profile-Id"),
    "body": b"".join(chunks).hex(),
    "stored": [(meta["id"], meta["path"], meta["trigger"]) for meta in DirectoryStore(
        {str(store)!r}).recent()],
}}))
"""
    outcome = json.loads(python(bin_dir, app, elsewhere, clean_environ(bin_dir)))

    assert outcome["status"] == "200 OK"
    assert bytes.fromhex(outcome["body"]) == sum(range(10_000)).to_bytes(8, "big")
    assert outcome["stored"] == [[outcome["profile_id"], "/work", "token"]]
