"""The production stack, nginx in front of uWSGI, run by supervisord as the current user.

    from deploy.stack import Stack, StackSettings
    stack = Stack(StackSettings(port=8000, uwsgi_instances=2))
    stack.start()      # renders var/run/, starts supervisord, waits until the site answers
    stack.reload()     # rolling graceful reload of every uWSGI instance, then nginx
    stack.stop()       # supervisord stops nginx, then uWSGI, gracefully; nothing is left

``scripts/serve`` is the command line (:mod:`deploy.stack.cli`), and the stack tests and the
tuning lab use the same class, so what is tested is what runs. supervisord does the part
systemd does in production: it restarts a uWSGI instance that dies while nginx keeps serving
the frozen pages, and stops everything in order.

Everything lives in one run directory (``var/run`` by default)::

    supervisord.conf  .sock  .pid  .log       supervisord: its config, socket, pid file, log
    uwsgi-<n>.sock  .fifo  -stats.sock  .log   one set per uWSGI instance (program uwsgi-<n>)
    nginx/          nginx's prefix: rendered nginx.conf, site.conf, servers/*.conf,
                    nginx.pid, error.log, access.log, tmp/, cache/

uWSGI always runs deploy/uwsgi/uwsgi.ini itself: what differs per instance (the socket, the
FIFO ...) is passed as ``UWSGI_*`` environment variables, which uWSGI reads as options.
nginx's config is rendered from the Jinja2 templates in deploy/nginx/ (``*.j2``).

Where nginx is not installed, ``StackSettings(nginx=None)`` runs uWSGI alone on the HTTP
port, serving the frozen files itself (``check-static``): no security headers, no
micro-cache, no HTTPS; good enough to look at the site.

Modules: :mod:`.settings` (what to run), :mod:`.render` (config files), :mod:`.supervise`
(supervisord), :mod:`.uwsgi` (an instance's files, FIFO and stats), :mod:`.stack`,
:mod:`.cli`, :mod:`.tls` (a self-signed certificate), :mod:`.uwsgi_protocol` (a test client).
"""

from .render import NginxConfig, render_nginx
from .settings import PROJECT_ROOT, StackError, StackSettings, find_nginx, find_uwsgi
from .stack import Stack
from .tls import make_self_signed_certificate
from .uwsgi import UwsgiInstance
from .uwsgi_protocol import uwsgi_get

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
    "uwsgi_get",
]
