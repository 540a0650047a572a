"""Profiling engines behind one small interface.

A :class:`Profiler` records one request at a time (the middleware's process
lock guarantees it) and turns what it stored back into pages and downloads::

    profiler = PyinstrumentProfiler(interval=0.001)
    profiler.start("GET /episodes")
    ...                                   # the work to profile
    data = profiler.stop()                # bytes, kept by a Store
    page = profiler.render_html(data)     # pyinstrument's call tree and timeline
    speedscope = profiler.export(data, "speedscope")

To add an engine, subclass :class:`Profiler`, give it a unique ``name`` and
pass an instance as the middleware's ``profiler`` option; stored profiles name
their engine, and the viewer reads them back with it.
"""

from __future__ import annotations

import _signal
import abc
import cProfile
import functools
import importlib.resources
import io
import json
import marshal
import pstats
import signal
import sys
import threading
import time
import timeit
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pyinstrument
from pyinstrument.renderers import SpeedscopeRenderer
from pyinstrument.renderers.html import JSONForHTMLRenderer
from pyinstrument.session import Session
from pyinstrument.stack_sampler import build_call_stack, get_stack_sampler

from .pages import element, json_for_script, page, script_hash


@dataclass(frozen=True)
class ExportFormat:
    suffix: str
    """Appended to the profile id to name the downloaded file."""
    content_type: str


class Profiler(abc.ABC):
    """Starts and stops recordings on the current thread and reads them back."""

    name: ClassVar[str]
    """Stored with each profile, to find the engine that can read it."""
    formats: ClassVar[dict[str, ExportFormat]]
    """The downloads :meth:`export` can produce, by format name."""

    @abc.abstractmethod
    def start(self, description: str) -> None:
        """Start recording; ``description`` names the request (no secrets in it)."""

    @abc.abstractmethod
    def stop(self) -> bytes:
        """Stop recording and return the profile in this engine's storage format."""

    def stop_deferred(self) -> Callable[[], bytes]:
        """Stop recording; the returned function makes what :meth:`stop` returns.

        The middleware calls it on the writer's thread, so converting the
        recording costs the request nothing. Engines override this when their
        conversion can wait; by default it converts at once.
        """
        data = self.stop()
        return lambda: data

    def pause(self) -> None:
        """The server has control until :meth:`resume` (it writes the response).

        Between the application's call and each chunk of its body the server
        runs its own code: an engine that interrupts the process (a timer
        signal) must not do it then. Nothing by default.
        """
        return

    def resume(self) -> None:
        """The application has control again (it makes the next chunk)."""
        return

    @abc.abstractmethod
    def render_html(self, data: bytes) -> str:
        """A complete HTML page that shows a stored profile.

        Everything in it that came from the request (the description, and
        anything the profiled code named after it) must be escaped for where
        it is placed: the page is served from the site's own origin.
        """

    @property
    def script_hashes(self) -> tuple[str, ...]:
        """The inline scripts :meth:`render_html`'s pages run, as CSP hash sources.

        The viewer's Content-Security-Policy allows these scripts and no
        other, so a script that slipped into a page anyway would not run.
        None by default: a page with scripts must list them here.
        """
        return ()

    @abc.abstractmethod
    def export(self, data: bytes, fmt: str) -> bytes:
        """A stored profile converted to one of :attr:`formats`.

        Raises (anything) when ``data`` is not a profile this engine reads, as :meth:`render_html`
        does, even for a format that is the stored bytes themselves: the viewer then answers that
        the profile is damaged, instead of serving a file that no tool can open.
        """


class PyinstrumentProfiler(Profiler):
    """pyinstrument's statistical profiler: low overhead, a sample every ``interval`` s.

    Profiles are stored as pyinstrument session JSON, so the page is
    pyinstrument's own HTML app (call tree and timeline) and the session
    downloads as speedscope JSON or as a ``.pyisession`` for
    ``pyinstrument --load``.

    The page is pyinstrument's, assembled here rather than by its
    ``HTMLRenderer``: that one writes the session's JSON, request path
    included, into a script as it is, so a path containing ``</script>`` would
    end the script and start the attacker's. Here the JSON sits in a data
    block (``type="application/json"``, never run) with ``<``, ``>`` and ``&``
    escaped, and the two scripts that do run never change, so the page's
    policy allows exactly them by hash.

    pyinstrument samples from a hook on every Python and C call
    (``sys.setprofile``), which on Python 3.11 also turns off the interpreter's
    specialised instructions for as long as it is set: a request shorter than
    one interval pays for the hook whole and gets no sample. So by default the
    hook is set only once a request has run for one ``interval``: a one-shot
    ``SIGALRM`` timer (``setitimer``) starts pyinstrument then, and its first
    sample is weighed from the request's start, as pyinstrument weighs every
    sample by the time since the one before. A shorter request is stored as
    pyinstrument would record it: its duration and CPU time, no samples. The
    timer runs only while the application has control (:meth:`pause`: not
    while the server writes the response, whose ``poll`` a signal would
    interrupt), on the main thread (where Python runs signal handlers), and
    only when nothing else handles ``SIGALRM``; otherwise the hook is set when
    the request starts.

    :param interval: seconds between two samples.
    :param timer_start: wait for the timer before setting the hook, as above;
        False sets it when each request starts.
    """

    name = "pyinstrument"
    formats = {
        "speedscope": ExportFormat(".speedscope.json", "application/json"),
        "session": ExportFormat(".pyisession", "application/json"),
    }

    def __init__(self, interval: float = 0.001, *, timer_start: bool = True) -> None:
        self.interval = interval
        self.timer_start = timer_start
        self._running: pyinstrument.Profiler | None = None
        self._waiting: _Waiting | None = None
        self._armed = False
        self._remaining = 0.0

    def start(self, description: str) -> None:
        caller = sys._getframe(1)
        if self.timer_start and _take_timer(self):
            # The hook waits for the timer: see the class's documentation. The stack is
            # taken now, not the frame: a frame keeps its callers' locals alive (the
            # server's response, whose close() ends this profile).
            self._waiting = _Waiting(
                description,
                build_call_stack(caller, "initial", None),
                time.time(),
                timeit.default_timer(),
                time.process_time(),
            )
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.interval)
        else:
            self._start_sampler(description, caller)

    def _start_sampler(self, description: str, caller: types.FrameType | None) -> None:
        # A WSGI request runs on one thread with no event loop, so tracking
        # await points would only add cost.
        sampler = pyinstrument.Profiler(interval=self.interval, async_mode="disabled")
        sampler.start(caller_frame=caller, target_description=description)
        self._running = sampler

    def _timer_fired(self, frame: types.FrameType | None) -> None:
        waiting = self._waiting
        if waiting is None or self._running is not None:  # a late signal: already stopped
            return
        stack_sampler = get_stack_sampler()
        if not stack_sampler.subscribers:
            # pyinstrument weighs each sample by the time since the one before: the first
            # one counts from the request's start, as if the hook had been set then.
            stack_sampler.last_profile_time = waiting.timer
        self._armed = False
        self._start_sampler(waiting.description, frame)

    def pause(self) -> None:
        if self._armed:
            self._armed = False
            # An application that took SIGALRM during the request also took the timer
            # (alarm() and setitimer share it): it is the application's now, left alone.
            # _signal's getsignal, not signal's: before Python 3.13 that one converts the
            # handler to an enum by raising and catching a ValueError, which costs more than
            # the rest of a pause, and a profiled request pauses at every chunk.
            timer_taken = _signal.getsignal(signal.SIGALRM) is not _on_timer
            self._remaining = 0.0 if timer_taken else signal.setitimer(signal.ITIMER_REAL, 0)[0]

    def resume(self) -> None:
        # Zero remaining: the signal is on its way (the handler starts the sampler), or the
        # application took the timer.
        if self._waiting is not None and self._running is None and self._remaining > 0:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self._remaining)

    def stop(self) -> bytes:
        return self.stop_deferred()()

    def stop_deferred(self) -> Callable[[], bytes]:
        waiting, self._waiting = self._waiting, None
        self.pause()
        end_time, end_cpu = time.time(), time.process_time()
        running, self._running = self._running, None
        if running is None:
            if waiting is None:
                raise RuntimeError("stop() without start()")
            # Shorter than one interval: what pyinstrument records then, with no samples.
            description, start_time, start_cpu = waiting.description, waiting.time, waiting.cpu
            start_call_stack = waiting.start_call_stack

            def empty_session() -> bytes:
                session = Session(
                    frame_records=[],
                    start_time=start_time,
                    duration=end_time - start_time,
                    min_interval=self.interval,
                    max_interval=self.interval,
                    sample_count=0,
                    start_call_stack=start_call_stack,
                    target_description=description,
                    cpu_time=end_cpu - start_cpu,
                    sys_path=sys.path,
                    sys_prefixes=Session.current_sys_prefixes(),
                )
                return json.dumps(session.to_json()).encode()

            return empty_session
        session = running.stop()
        if waiting is not None:
            # Started by the timer: the session covers the request from its start.
            session.start_call_stack = waiting.start_call_stack
            session.start_time = waiting.time
            session.duration = end_time - waiting.time
            session.cpu_time = end_cpu - waiting.cpu
        return lambda: json.dumps(session.to_json()).encode()

    def render_html(self, data: bytes) -> str:
        session = _displayable(self._session(data))
        css, app_js = _html_app()
        session_json = json_for_script(JSONForHTMLRenderer().render(session))
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>pyinstrument</title>\n<style>{css}</style>\n</head>\n<body>\n"
            '<div id="app"></div>\n'
            f'<script type="application/json" id="{_DATA_ID}">{session_json}</script>\n'
            f"<script>{app_js}</script>\n<script>{_START_APP}</script>\n</body>\n</html>\n"
        )

    @property
    def script_hashes(self) -> tuple[str, ...]:
        return _app_script_hashes()

    def export(self, data: bytes, fmt: str) -> bytes:
        if fmt == "session":
            self._session(data)  # served as stored, once it reads back
            return data
        if fmt == "speedscope":
            speedscope: str = SpeedscopeRenderer().render(self._session(data))
            return speedscope.encode()
        raise KeyError(fmt)

    @staticmethod
    def _session(data: bytes) -> Session:
        return Session.from_json(json.loads(data))


@dataclass(frozen=True)
class _Waiting:
    """A request whose sampler waits for the timer."""

    description: str
    start_call_stack: list[str]
    time: float
    timer: float
    """``timeit.default_timer()``, pyinstrument's clock."""
    cpu: float


#: The profiler whose request the SIGALRM timer is for (one profile at a time per process).
_timer_owner: PyinstrumentProfiler | None = None


def _on_timer(signum: int, frame: types.FrameType | None) -> None:
    if _timer_owner is not None:
        _timer_owner._timer_fired(frame)


def _take_timer(profiler: PyinstrumentProfiler) -> bool:
    """Whether ``profiler`` may start on the SIGALRM timer; makes it the timer's owner.

    Python runs signal handlers on the main thread only, so a request on another
    thread (a threaded server) sets the hook at once. So does a process whose
    SIGALRM someone else handles (``signal.alarm`` timeouts).
    """
    global _timer_owner
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        return False
    handler: Any = _signal.getsignal(signal.SIGALRM)  # as in pause(): no enum
    if handler is not _on_timer:
        if handler is not _signal.SIG_DFL:  # the raw value, not signal's enum
            return False
        signal.signal(signal.SIGALRM, _on_timer)
        # Restart the system calls the signal interrupts rather than fail them with EINTR
        # (Python retries its own; a C extension's might not).
        signal.siginterrupt(signal.SIGALRM, False)
    _timer_owner = profiler
    return True


_DATA_ID = "pyinstrument-session"
_START_APP = (
    "pyinstrumentHTMLRenderer.render(document.getElementById('app'), "
    f"JSON.parse(document.getElementById('{_DATA_ID}').textContent));"
)
#: pyinstrument's page handles this many samples; its HTMLRenderer resamples larger sessions.
_MAX_HTML_SAMPLES = 100_000


@functools.cache
def _html_app() -> tuple[str, str]:
    """The CSS and the JavaScript of pyinstrument's HTML app, as its HTMLRenderer reads them."""
    resources = importlib.resources.files("pyinstrument.renderers") / "html_resources"
    css = (resources / "app.css").read_text(encoding="utf-8")
    app_js = (resources / "app.js").read_text(encoding="utf-8")
    # Inlined as pyinstrument inlines them; a closing tag inside would end them early.
    if "</style" in css.lower() or "</script" in app_js.lower():
        raise RuntimeError("pyinstrument's HTML app cannot be inlined safely")
    return css, app_js


@functools.cache
def _app_script_hashes() -> tuple[str, str]:
    return script_hash(_html_app()[1]), script_hash(_START_APP)


def _displayable(session: Session) -> Session:
    """``session`` with few enough samples for the page, as pyinstrument's HTMLRenderer does it."""
    if len(session.frame_records) <= _MAX_HTML_SAMPLES:
        return session
    interval = session.duration / 10_000  # 0.01% of the duration, pyinstrument's choice
    resampled = session.resample(interval)
    while len(resampled.frame_records) > _MAX_HTML_SAMPLES:
        interval *= 2
        resampled = session.resample(interval)
    return resampled


class CProfileProfiler(Profiler):
    """The standard library's deterministic profiler: every call counted, at a higher cost.

    Profiles are stored in the ``.pstats`` format of ``cProfile.Profile.dump_stats``,
    which ``pstats``, snakeviz and gprof2dot read.
    """

    name = "cprofile"
    formats = {"pstats": ExportFormat(".pstats", "application/octet-stream")}

    #: Rows of the table on the profile's page; the download has them all.
    rows = 80

    def __init__(self) -> None:
        self._running: cProfile.Profile | None = None

    def start(self, description: str) -> None:
        profile = cProfile.Profile()
        profile.enable()
        self._running = profile

    def stop(self) -> bytes:
        return self.stop_deferred()()

    def stop_deferred(self) -> Callable[[], bytes]:
        if self._running is None:
            raise RuntimeError("stop() without start()")
        profile, self._running = self._running, None
        profile.disable()

        def dump() -> bytes:
            profile.snapshot_stats()  # what create_stats() does after disable()
            return marshal.dumps(profile.stats)  # what dump_stats() writes

        return dump

    def render_html(self, data: bytes) -> str:
        text = io.StringIO()
        stats = _read_stats(data, text)
        stats.strip_dirs().sort_stats("cumulative").print_stats(self.rows)
        return page("cProfile", element("pre", text.getvalue()))

    def export(self, data: bytes, fmt: str) -> bytes:
        if fmt == "pstats":
            _read_stats(data)  # served as stored, once it reads back
            return data
        raise KeyError(fmt)


def _read_stats(data: bytes, stream: io.StringIO | None = None) -> pstats.Stats:
    """Stored stats read back; raises if ``data`` is not that (cut short, another file)."""
    # pstats reads any object with create_stats() and .stats, not only a Profile.
    return pstats.Stats(_LoadedStats(data), stream=stream or io.StringIO())  # type: ignore[arg-type]


class _LoadedStats:
    """Stored stats in the shape ``pstats.Stats`` accepts besides a file name."""

    def __init__(self, data: bytes) -> None:
        self.stats = marshal.loads(data)

    def create_stats(self) -> None:
        """The stats are already complete."""


BUILTIN_PROFILERS: dict[str, type[Profiler]] = {
    PyinstrumentProfiler.name: PyinstrumentProfiler,
    CProfileProfiler.name: CProfileProfiler,
}


def get_profiler(spec: str | Profiler, interval: float = 0.001) -> Profiler:
    """The engine for the middleware's ``profiler`` option: a name or an instance."""
    if isinstance(spec, Profiler):
        return spec
    if spec == PyinstrumentProfiler.name:
        return PyinstrumentProfiler(interval=interval)
    if spec == CProfileProfiler.name:
        return CProfileProfiler()
    raise ValueError(
        f"unknown profiler {spec!r}; use one of {sorted(BUILTIN_PROFILERS)} or an instance"
    )
