"""The site's most read pages as static files, for nginx to serve without Python.

    flask --app webapp freeze                 # into FREEZE_DIR (var/build)
    flask --app webapp freeze --dest /srv/podcast/build
    flask --app webapp pull-build app1:/srv/podcast/var/build   # on an nginx machine (``pull``)

    from webapp.freeze import freeze
    report = freeze(app, "var/build")         # a BuildReport; FreezeError on failure
    report.changed                            # files written or removed: what a deploy syncs

Frozen-Flask's URL generators list the pages (``site``). Each is rendered
as the app answers its URL (through its views; episode pages with the view's
template, from the one read of the data), so its file holds the bytes the app
serves, which tests/test_freeze.py checks for every page. Text files get a
deterministic ``.gz`` sibling for nginx's ``gzip_static``. Only pages whose
inputs changed are rendered again, and unchanged files keep their inode and
modification time (``build``). Each build goes live in one atomic rename of a
symlink (``output``).

The layout nginx serves (``<dest>`` is a symlink to the live build tree)::

    index.html  episodes/index.html  episodes/<n>/<slug>.html  episodes/rss.xml
    404.html  static/…  (+ a .gz beside each text file)
    nginx/episodes.map   "<n> <canonical path>;" for the episode redirects (inside a map)
    nginx/redirects.conf the app's other redirects to frozen pages (server context)
    manifest.json        what the last build changed
"""

from .build import BuildReport, SiteBuild, freeze
from .command import freeze_command, pull_build_command
from .output import FreezeError
from .pull import PullReport, pull_build

__all__ = [
    "BuildReport",
    "FreezeError",
    "PullReport",
    "SiteBuild",
    "freeze",
    "freeze_command",
    "pull_build",
    "pull_build_command",
]
