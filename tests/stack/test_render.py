"""The rendered supervisord.conf says what the stack means, read back by supervisor's own parser."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from deploy.stack import Stack, StackError, StackSettings
from deploy.stack.render import supervisor_value
from tests.conftest import require_binary


def read_back(stack: Stack) -> dict[str, object]:
    """Each program's command (split as supervisord splits it), environment and log, by name."""
    options = ServerOptions()
    options.realize(args=["-c", str(stack.supervisor.config)])
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
    assert environment == instance.options() and log == str(instance.log)


def test_uwsgi_starts_first_and_nginx_stops_first_in_the_foreground(tmp_path: Path) -> None:
    nginx = require_binary("nginx")
    stack = Stack(StackSettings(run_dir=tmp_path, build_dir=tmp_path, nginx=nginx, uwsgi="uwsgi"))
    stack.render()
    command = read_back(stack)["nginx:nginx"][0]
    assert command[command.index("-c") + 1] == str(stack.nginx_dir / "nginx.conf")
    assert command[-2:] == ["-g", "daemon off;"]  # supervisord runs it, never a daemon
    options = ServerOptions()
    options.realize(args=["-c", str(stack.supervisor.config)])
    # supervisord starts groups by ascending priority and stops them in the reverse order.
    order = sorted(options.process_group_configs)
    assert [group.name for group in order] == ["uwsgi", "nginx"]


@pytest.mark.parametrize("text", ['say "hi"', "two\nlines", "a ;comment", "a #comment", "100%"])
def test_values_supervisord_would_misread_are_refused(text: str) -> None:
    with pytest.raises(StackError):
        supervisor_value(text)
