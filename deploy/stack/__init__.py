"""The production stack, nginx in front of uWSGI, run by supervisord as the current user.

    from deploy.stack import Stack, StackSettings
    stack = Stack(StackSettings(port=8000, uwsgi_instances=2))
    stack.start()      # renders var/run/, starts supervisord, waits until the site answers
    stack.reload()     # rolling graceful reload of every uWSGI instance, then nginx
    stack.stop()       # supervisord stops nginx, then uWSGI, gracefully; nothing is left

``scripts/serve`` is the command line (:mod:`.cli`); the stack tests and the tuning lab use
the same class. deploy/README.md says what runs where, and why.
"""

from .settings import StackError, StackSettings
from .stack import Stack

__all__ = ["Stack", "StackError", "StackSettings"]
