"""``python -m lab``: the tuning lab's command line (scripts/bench runs it)."""

import sys

from .cli import main

sys.exit(main())
