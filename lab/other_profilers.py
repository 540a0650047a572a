"""The ways a team would profile every request without request_profiler, as their docs show them.

    install_pyinstrument_recipe(app)             # ?profile requests answer pyinstrument's page
    install_werkzeug_profiler(app, profile_dir)  # every request's cProfile stats, a file each

The lab (``app.profiler`` = ``pyinstrument_recipe`` or ``werkzeug``, through
lab.wsgi) and tests/benchmarks/test_profiler_bench.py measure request_profiler
against these.
"""

from __future__ import annotations

import os

from flask import Flask, Response, g, make_response, request
from pyinstrument import Profiler
from werkzeug.middleware.profiler import ProfilerMiddleware


def install_pyinstrument_recipe(app: Flask) -> None:
    """pyinstrument's user guide, "Profile a web request in Flask", as written there.

    The profile is rendered as pyinstrument's HTML page on every profiled request.
    """

    @app.before_request
    def before_request() -> None:
        if "profile" in request.args:
            g.profiler = Profiler()
            g.profiler.start()

    @app.after_request
    def after_request(response: Response) -> Response:
        if not hasattr(g, "profiler"):
            return response
        g.profiler.stop()
        output_html = g.profiler.output_html()
        return make_response(output_html)


def install_werkzeug_profiler(app: Flask, profile_dir: str | os.PathLike[str]) -> None:
    """Werkzeug's ProfilerMiddleware around every request, keeping each profile as a file.

    ``profile_dir`` is its documented way to keep the stats (one ``.prof`` file per
    request, for snakeviz or pstats); ``stream=None`` prints nothing, so the two
    keep every profile as request_profiler does. Its default file name has the time
    to the second, so requests to one path within a second overwrite each other:
    microseconds here. Werkzeug never prunes the directory.
    """
    os.makedirs(profile_dir, exist_ok=True)
    app.wsgi_app = ProfilerMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        stream=None,
        profile_dir=os.fspath(profile_dir),
        filename_format="{method}.{path}.{elapsed:.0f}ms.{time:.6f}.prof",
    )
