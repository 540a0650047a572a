"""The rendered configs say what the stack means: supervisord.conf read back by supervisor's own
parser, and each switch of the nginx templates checked by ``nginx -t``."""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from supervisor.options import ServerOptions

from deploy.stack import Stack, StackError, StackSettings
from deploy.stack.cli import cli
from deploy.stack.render import render_nginx, supervisor_value
from deploy.stack.settings import DEPLOY_DIR
from tests.conftest import require_binary

from .support import free_port, get, wait_until

PRODUCTION_VALUES = DEPLOY_DIR / "nginx" / "production.toml"


def without_tls(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(("https_listen", "certificate")))


def read_back(stack: Stack) -> dict[str, object]:
    """Each program's command (split as supervisord splits it), environment and log, by name."""
    options = ServerOptions()
    options.realize(args=["-c", str(stack.supervisord_conf)])
    return {
        f"{group.name}:{program.name}": (
            shlex.split(program.command),
            program.environment,
            program.stdout_logfile,
        )
        for group in options.process_group_configs
        for program in group.process_configs
    }


def test_supervisord_reads_every_value_back_as_written(tmp_path: Path) -> None:
    # A checkout path may hold spaces, quotes, ";" and "#": none of it may change a value.
    run_dir = tmp_path / "a dir;with 'quotes'#1" / "run"
    stack = Stack(StackSettings(run_dir=run_dir, build_dir=tmp_path, nginx=None, uwsgi="uwsgi"))
    run_dir.mkdir(parents=True)
    stack.render()
    programs = read_back(stack)
    instance = stack.instances[0]
    command, environment, log = programs["uwsgi:uwsgi-1"]
    assert list(programs) == ["uwsgi:uwsgi-1"]
    assert command[0] == "uwsgi" and Path(command[2]).name == "uwsgi.ini"
    assert environment == {
        "UWSGI_SOCKET": str(instance.socket),
        "UWSGI_STATS": str(instance.stats_socket),
        "UWSGI_MASTER_FIFO": str(instance.fifo),
        "UWSGI_SAFE_PIDFILE": str(instance.pid_file),
        # No nginx: uWSGI serves the port, and the frozen files, itself.
        "UWSGI_HTTP_SOCKET": stack.settings.url.removeprefix("http://"),
        "UWSGI_CHECK_STATIC": str(tmp_path),
        "UWSGI_STATIC_INDEX": "index.html",
        "UWSGI_STATIC_GZIP_ALL": "true",
        "UWSGI_OFFLOAD_THREADS": "1",
    }
    assert log == str(instance.log)


def test_uwsgi_starts_first_and_nginx_stops_first_in_the_foreground(tmp_path: Path) -> None:
    nginx = require_binary("nginx")
    stack = Stack(StackSettings(run_dir=tmp_path, build_dir=tmp_path, nginx=nginx, uwsgi="uwsgi"))
    stack.render()
    command = read_back(stack)["nginx:nginx"][0]
    assert command[command.index("-c") + 1] == str(stack.nginx_dir / "nginx.conf")
    assert command[-2:] == ["-g", "daemon off;"]  # supervisord runs it, never a daemon
    options = ServerOptions()
    options.realize(args=["-c", str(stack.supervisord_conf)])
    # supervisord starts groups by ascending priority and stops them in the reverse order.
    order = sorted(options.process_group_configs)
    assert [group.name for group in order] == ["uwsgi", "nginx"]


@pytest.mark.parametrize("text", ['say "hi"', "two\nlines", "a ;comment", "a #comment", "100%"])
def test_values_supervisord_would_misread_are_refused(text: str) -> None:
    with pytest.raises(StackError):
        supervisor_value(text)


def base_nginx_variables(tmp_path: Path, **variables: object) -> dict[str, object]:
    """What the templates need, with every knob at its default."""
    values: dict = {
        "build_dir": tmp_path / "build",
        "upstreams": ["unix:/run/podcast/uwsgi-1.sock", "10.0.0.5:3031"],
        "http_listen": f"127.0.0.1:{free_port()}",
        "user": "root" if os.geteuid() == 0 else None,
    }
    return values | variables


@pytest.mark.parametrize(
    "field, value, file, present, absent",
    [
        ("microcache", False, "microcache.conf", "The micro-cache is off", "uwsgi_cache "),
        ("gzip", False, "nginx.conf", "\n    gzip_static off;", "gzip_static on;"),
        ("access_log", None, "nginx.conf", "\n    access_log off;", " redacted buffer=64k"),
        ("open_file_cache", False, "nginx.conf", "open_file_cache off;", "max=2000"),
        ("upstreams", ["10.0.0.9:3031"], "nginx.conf", 'server "10.0.0.9:3031" max', "unix:"),
        ("api_rate_limit", 5, "site.conf", "podcast_api burst=10 nodelay;", "No rate limit"),
        ("harakiri", "7", "nginx.conf", "uwsgi_read_timeout 12s;", "uwsgi_read_timeout 35s;"),
        (
            "connections_per_address",
            5,
            "nginx.conf",
            "limit_conn podcast_address 5;",
            "No limit of connections per address",
        ),
        ("client_body_timeout", "3s", "nginx.conf", "client_body_timeout 3s;", "body_timeout 10s"),
    ],
)
def test_each_switch_of_the_nginx_templates_renders_a_valid_config(
    tmp_path: Path, field: str, value: object, file: str, present: str, absent: str
) -> None:
    """Every {% if %} of deploy/nginx/*.j2 both ways: nginx -t accepts it, and it says what the
    switch asks (the deployed side is checked by the stack tests and the production render)."""
    nginx = require_binary("nginx")
    (tmp_path / "tmp").mkdir()
    conf = render_nginx(tmp_path, **base_nginx_variables(tmp_path, **{field: value}))
    text = (tmp_path / file).read_text()
    assert present in text and absent not in text
    checked = subprocess.run(
        [nginx, "-t", "-q", "-p", f"{tmp_path}/", "-c", str(conf), "-e", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Nor a warning: nginx writes each one to its error log again at every start and reload.
    assert checked.returncode == 0 and not checked.stderr, checked.stderr


def test_production_values_render_and_their_tls_lines_may_go_together(tmp_path: Path) -> None:
    """production.toml renders as it is; without its three TLS lines, with https_only = false,
    it renders plain HTTP that serves the site (TLS ends in front)."""
    for name, text in [
        ("https", PRODUCTION_VALUES.read_text()),
        (
            "http",
            without_tls(PRODUCTION_VALUES.read_text()).replace(
                "https_only = true", "https_only = false"
            ),
        ),
    ]:
        (tmp_path / f"{name}.toml").write_text(text)
        out = tmp_path / name
        result = CliRunner().invoke(
            cli, ["render", str(tmp_path / f"{name}.toml"), "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        conf = (out / "nginx.conf").read_text()
        # Slow clients bounded, and at most 64 requests in progress per address.
        assert "limit_conn podcast_address 64;" in conf
        assert "client_header_timeout 10s;" in conf and "client_body_timeout 10s;" in conf
        assert ("listen 443 ssl http2" in conf) == (name == "https")
        assert ("return 301 https://" in conf) == (name == "https")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_production_redirects_to_https_on_its_own_name_whatever_the_host(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """production.toml rendered and run (paths and ports moved under tmp_path): port 80 sends
    any Host to https://server_name, not to the Host a request names."""
    nginx = require_binary("nginx")
    http_port, https_port = free_port(), free_port()
    values = PRODUCTION_VALUES.read_text()
    for old, new in [
        ("/etc/letsencrypt/live/podcast.example.org/fullchain.pem", str(certificate[0])),
        ("/etc/letsencrypt/live/podcast.example.org/privkey.pem", str(certificate[1])),
        ('"80"', f'"127.0.0.1:{http_port}"'),
        ('"443"', f'"127.0.0.1:{https_port}"'),
        ('"www-data"', '"root"' if os.geteuid() == 0 else '"www-data"'),
        *[(f'"{path}', f'"{tmp_path}{path}') for path in ("/srv", "/run", "/var")],
    ]:
        values = values.replace(old, new)
    for directory in ("var/log/nginx", "var/lib/nginx", "var/cache/nginx", "run"):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    (tmp_path / "nginx.toml").write_text(values)
    result = CliRunner().invoke(
        cli, ["render", str(tmp_path / "nginx.toml"), "--out", str(tmp_path / "conf")]
    )
    assert result.exit_code == 0, result.output
    command = [nginx, "-p", f"{tmp_path}/", "-c", str(tmp_path / "conf" / "nginx.conf")]
    server = subprocess.Popen([*command, "-e", "stderr", "-g", "daemon off;"])
    try:
        assert wait_until(lambda: listening(http_port), timeout=10), "nginx did not start"
        for host in ["podcast.example.org", "evil.example"]:
            status, headers, _ = get(f"http://127.0.0.1:{http_port}/episodes/?a=1", {"Host": host})
            assert status == 301
            assert headers["Location"] == "https://podcast.example.org/episodes/?a=1", host
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_status_where_no_stack_has_run_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--run-dir", str(tmp_path)])
    assert result.exit_code == 4 and "no stack has run" in result.output


@pytest.mark.parametrize(
    "edit, error",
    [
        # HTTPS without its certificate: nginx would refuse to start.
        (lambda text: text.replace("certificate_key =", "# certificate_key ="), "certificate_key"),
        (lambda text: text.replace("upstreams =", "# upstreams ="), "upstreams"),
        (
            lambda text: text.replace("server_name =", "server_nam ="),
            "no template reads server_nam",
        ),
        (lambda text: text.replace("api_rate_limit = 20", "api_rate_limit = "), "Invalid value"),
        # A value left out would be the local stack's default (pid nginx.pid, no rate limit).
        (lambda text: text.replace("pid_file =", "# pid_file ="), "pid_file is missing"),
        (lambda text: text.replace('"/srv/podcast/var/build"', '"var/build"'), "absolute path"),
        # A string where a list belongs would be iterated: `server u; server n; ...`.
        (
            lambda text: text.replace('["unix:/run/podcast/uwsgi-1.sock"]', '"unix:/x"'),
            "must be list",
        ),
        (lambda text: text.replace('["unix:/run/podcast/uwsgi-1.sock"]', "[]"), "cannot be []"),
        (lambda text: text.replace("api_rate_limit = 20", 'api_rate_limit = "20"'), "must be int"),
        (lambda text: text.replace("api_rate_limit = 20", "api_rate_limit = -1"), "cannot be -1"),
        (lambda text: text.replace("https_only = true", 'https_only = "false"'), "must be bool"),
        # A limit left out would be the local stack's: none.
        (
            lambda text: text.replace("connections_per_address =", "# connections_per_address ="),
            "connections_per_address is missing",
        ),
        (
            lambda text: text.replace(
                "connections_per_address = 64", "connections_per_address = -1"
            ),
            "cannot be -1",
        ),
        # nginx -t would refuse it on the server, after the render said nothing.
        (
            lambda text: text.replace(
                'client_body_timeout = "10s"', 'client_body_timeout = "10 s"'
            ),
            "client_body_timeout must be a time nginx reads",
        ),
        # TLS ends in front, but the redirect to HTTPS stayed: a redirect loop.
        (without_tls, "https_only = true needs https_listen"),
        # A value holding nginx syntax would add directives of its own.
        (lambda text: text.replace('"podcast.example.org"', '"a.org; return 200"'), "misread"),
        (lambda text: text.replace('"podcast.example.org"', '"a.org\\nlisten 1"'), "misread"),
        # Quoted, a path is still read for variables: root "/srv/$site" would be a per-request
        # (here, unknown) variable, not the directory.
        (
            lambda text: text.replace('"/srv/podcast/var/build"', '"/srv/$site/var/build"'),
            "misread",
        ),
        # Each item of a list is of the type production.toml's items are, and says something:
        # `server 1;` or `server "";` would be nginx -t's to find, on the server.
        (
            lambda text: text.replace('["unix:/run/podcast/uwsgi-1.sock"]', "[3031]"),
            "upstreams must be a list of str",
        ),
        (
            lambda text: text.replace('["unix:/run/podcast/uwsgi-1.sock"]', '[["unix:/x"]]'),
            "upstreams must be a list of str",
        ),
        (
            lambda text: text.replace('["unix:/run/podcast/uwsgi-1.sock"]', '["unix:/x", ""]'),
            "upstreams cannot hold ''",
        ),
        (lambda text: text.replace('"podcast.example.org"', '""'), "server_name cannot be ''"),
    ],
    ids=[
        "no-certificate-key",
        "no-upstreams",
        "misspelt",
        "not-toml",
        "no-pid-file",
        "relative-build-dir",
        "upstreams-a-string",
        "no-upstream",
        "rate-a-string",
        "rate-negative",
        "switch-a-string",
        "no-connection-limit",
        "connection-limit-negative",
        "timeout-not-a-time",
        "https-only-without-https",
        "directive-in-a-value",
        "newline-in-a-value",
        "variable-in-a-path",
        "upstream-a-number",
        "upstream-a-list",
        "upstream-empty",
        "server-name-empty",
    ],
)
def test_a_production_render_that_cannot_work_is_refused(
    tmp_path: Path, edit: Callable[[str], str], error: str
) -> None:
    values = tmp_path / "nginx.toml"
    values.write_text(edit(PRODUCTION_VALUES.read_text()))
    result = CliRunner().invoke(cli, ["render", str(values), "--out", str(tmp_path / "conf")])
    assert result.exit_code == 1 and error in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "conf").exists()


def test_a_value_no_nginx_template_reads_is_refused(tmp_path: Path) -> None:
    """A misspelt knob (StackSettings.nginx_options, the lab's settings) would otherwise leave
    the deployed default in place and measure nothing."""
    with pytest.raises(StackError, match="the nginx templates have no gzip_static"):
        render_nginx(tmp_path / "conf", **base_nginx_variables(tmp_path, gzip_static=False))
    assert not (tmp_path / "conf").exists()
    # Every knob the templates read is accepted, those of the included server blocks too.
    render_nginx(tmp_path / "conf", **base_nginx_variables(tmp_path, server_name="example.org"))
    assert "server_name example.org;" in (tmp_path / "conf" / "nginx.conf").read_text()


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00x = 1\n", bytes(range(256))],
    ids=["not-utf-8", "binary"],
)
def test_values_that_are_not_text_are_refused_in_one_line(tmp_path: Path, content: bytes) -> None:
    values = tmp_path / "nginx.toml"
    values.write_bytes(content)
    result = CliRunner().invoke(cli, ["render", str(values), "--out", str(tmp_path / "conf")])
    assert result.exit_code == 1 and f"Error: {values}: not UTF-8 text" in result.output, (
        result.output
    )
    assert not (tmp_path / "conf").exists()


def test_a_config_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "conf"
    result = CliRunner().invoke(cli, ["render", str(PRODUCTION_VALUES), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"Error: cannot write {out}: Not a directory" in result.output, result.output


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_a_port_out_of_range_is_refused_before_anything_starts(tmp_path: Path, port: str) -> None:
    result = CliRunner().invoke(
        cli, ["start", "--no-freeze", "--detach", "--run-dir", str(tmp_path), "--port", port]
    )
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_a_run_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stack = Stack(StackSettings(run_dir=blocker / "run", build_dir=tmp_path, uwsgi="uwsgi"))
    with pytest.raises(StackError, match=f"cannot write {blocker / 'run'}: Not a directory"):
        stack.start()


def test_an_ipv6_host_renders_a_config_nginx_accepts(tmp_path: Path) -> None:
    """nginx reads `listen ::1:8000` as a port of "::1:8000"; the address goes in brackets."""
    nginx = require_binary("nginx")
    settings = StackSettings(
        run_dir=tmp_path / "run", build_dir=tmp_path, host="::1", nginx=nginx, uwsgi="uwsgi"
    )
    assert settings.url == f"http://[::1]:{settings.port}"
    stack = Stack(settings)
    stack.run_dir.mkdir()
    stack.render()  # nginx -t: a StackError if nginx rejects the config
    assert f"listen [::1]:{settings.port}" in (stack.nginx_dir / "nginx.conf").read_text()
    alone = Stack(dataclasses.replace(settings, nginx=None))  # uWSGI listens on HTTP itself
    alone.render()
    assert f'UWSGI_HTTP_SOCKET="[::1]:{settings.port}"' in alone.supervisord_conf.read_text()
