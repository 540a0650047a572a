"""helpers.busy_app behind ProfilerMiddleware, for uWSGI in test_timer_start (never deployed).

UWSGI_MODULE=tests.profiler.uwsgi_busy_app:application PROFILER_TEST_DIR=... uwsgi --ini ...
"""

from __future__ import annotations

import os

from request_profiler import ProfilerMiddleware

from tests.profiler.helpers import SECRET, busy_app

application = ProfilerMiddleware(busy_app, secret=SECRET, directory=os.environ["PROFILER_TEST_DIR"])
