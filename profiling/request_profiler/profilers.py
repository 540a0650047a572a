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

import abc
import cProfile
import io
import json
import marshal
import pstats
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pyinstrument
from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer
from pyinstrument.session import Session

from .pages import element, page


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

    @abc.abstractmethod
    def render_html(self, data: bytes) -> str:
        """A complete HTML page that shows a stored profile."""

    @abc.abstractmethod
    def export(self, data: bytes, fmt: str) -> bytes:
        """A stored profile converted to one of :attr:`formats`."""


class PyinstrumentProfiler(Profiler):
    """pyinstrument's statistical profiler: low overhead, a sample every ``interval`` s.

    Profiles are stored as pyinstrument session JSON, so the page is
    pyinstrument's own HTML renderer (call tree and timeline) and the session
    downloads as speedscope JSON or as a ``.pyisession`` for
    ``pyinstrument --load``.
    """

    name = "pyinstrument"
    formats = {
        "speedscope": ExportFormat(".speedscope.json", "application/json"),
        "session": ExportFormat(".pyisession", "application/json"),
    }

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self._running: pyinstrument.Profiler | None = None

    def start(self, description: str) -> None:
        # A WSGI request runs on one thread with no event loop, so tracking
        # await points would only add cost.
        sampler = pyinstrument.Profiler(interval=self.interval, async_mode="disabled")
        sampler.start(target_description=description)
        self._running = sampler

    def stop(self) -> bytes:
        return self.stop_deferred()()

    def stop_deferred(self) -> Callable[[], bytes]:
        if self._running is None:
            raise RuntimeError("stop() without start()")
        session = self._running.stop()
        self._running = None
        return lambda: json.dumps(session.to_json()).encode()

    def render_html(self, data: bytes) -> str:
        html: str = HTMLRenderer().render(self._session(data))
        return html

    def export(self, data: bytes, fmt: str) -> bytes:
        if fmt == "session":
            return data
        if fmt == "speedscope":
            speedscope: str = SpeedscopeRenderer().render(self._session(data))
            return speedscope.encode()
        raise KeyError(fmt)

    @staticmethod
    def _session(data: bytes) -> Session:
        return Session.from_json(json.loads(data))


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
        # pstats reads any object with create_stats() and .stats, not only a Profile.
        stats = pstats.Stats(_LoadedStats(data), stream=text)  # type: ignore[arg-type]
        stats.strip_dirs().sort_stats("cumulative").print_stats(self.rows)
        return page("cProfile", element("pre", text.getvalue()))

    def export(self, data: bytes, fmt: str) -> bytes:
        if fmt == "pstats":
            return data
        raise KeyError(fmt)


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
