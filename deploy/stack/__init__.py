"""The production stack, nginx in front of uWSGI, run by supervisord as the current user.

    from deploy.stack import Stack, StackSettings
    stack = Stack(StackSettings(port=8000, uwsgi_instances=2))
    stack.start()      # renders var/run/, starts supervisord, waits until the site answers
    stack.reload()     # rolling graceful reload of every uWSGI instance, then nginx
    stack.stop()       # supervisord stops nginx, then uWSGI, gracefully; nothing is left

``scripts/serve`` is the command line (:mod:`.cli`); the stack tests and the tuning lab use
the same class. deploy/README.md says what runs where, and why.
"""

from .cli import make_self_signed_certificate
from .render import NginxConfig, render_nginx
from .settings import PROJECT_ROOT, StackError, StackSettings, find_nginx, find_uwsgi
from .stack import Stack
from .uwsgi import UwsgiInstance

__all__ = [
    "PROJECT_ROOT",
    "NginxConfig",
    "Stack",
    "StackError",
    "StackSettings",
    "UwsgiInstance",
    "find_nginx",
    "find_uwsgi",
    "make_self_signed_certificate",
    "render_nginx",
]
