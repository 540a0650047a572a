"""Run a click command as a function that returns its exit status (what the tests call).

    status = run_command(bench_command, ["--list"], "bench")     # 0, 1, 2 or 130

click's standalone mode exits the process; this returns the status instead, with
click's own messages for bad options and arguments (status 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import click


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """The command's exit status for ``argv`` (default: ``sys.argv[1:]``)."""
    try:
        status = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as error:  # a bad option or argument: click says which
        error.show()
        return error.exit_code
    except click.Abort:  # Ctrl-C while click was still reading input
        return 130
    return status if isinstance(status, int) else 0
