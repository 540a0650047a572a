"""``python -m deploy.stack``: the stack's command line (scripts/serve runs it)."""

import sys

from . import main

sys.exit(main())
