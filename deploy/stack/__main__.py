"""``python -m deploy.stack``: the stack's command line (scripts/serve runs it)."""

import sys

from .cli import cli
from .settings import StackError

try:
    cli(prog_name="scripts/serve")
except StackError as error:  # what went wrong, without a traceback
    sys.exit(f"Error: {error}")
