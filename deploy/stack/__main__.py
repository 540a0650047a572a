"""``python -m deploy.stack``: the stack's command line (scripts/serve runs it)."""

from .cli import cli

cli(prog_name="scripts/serve")
