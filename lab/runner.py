"""Runs experiments: the stack for each configuration, a warm-up, measured runs.

    results = run_lab(experiments, LabOptions(out_dir=Path("var/bench/x"), tool="wrk"), start_stack)

Runs are interleaved: round 1 measures every configuration once, then round
2, and so on, so a disturbance on the machine (another job, a thermal limit)
spreads over all configurations instead of landing on one. The stack is
restarted only when the next configuration needs different servers or app
settings; a configuration that differs only in its request reuses it.

Before any load, one request checks the configuration answers what it should
(its status, an ETag for conditional requests): a mistake in an experiment
fails loudly instead of measuring error pages.

Around each measured run the app server's CPU time is read (its master and workers,
lab.app_cpu): over the requests the run served, it is the app's CPU per request, which
other load on the machine disturbs far less than requests/s.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from pathlib import Path
from typing import Any, Protocol, TextIO

from .experiment import Configuration, Experiment
from .loadgen import LoadError, LoadResult, LoadSpec, run_load, search_query
from .memory import WorkerMemory
from .results import ExperimentResult
from .search_texts import SEARCH_TEXTS

#: Seconds the check before loading may take.
CHECK_TIMEOUT = 10.0


class LabError(RuntimeError):
    """The lab cannot go on; the message says why and what to do."""


class RunningStack(Protocol):
    def url(self, via: str) -> str:
        """The base URL (no trailing slash) of ``via``: "nginx" or "uwsgi"."""

    def stop(self) -> None:
        """Stop every process of the stack (idempotent)."""

    def worker_memory(self) -> list[WorkerMemory]:
        """The app server's workers' memory, now (asked only by experiments with memory)."""

    def app_cpu_seconds(self) -> float:
        """CPU seconds the app server's processes have used so far (lab.app_cpu)."""


#: Starts the servers for a configuration's settings; raises LabError if they do not come up.
StartStack = Callable[[Mapping[str, Any]], RunningStack]


@dataclass
class LabOptions:
    """How :func:`run_lab` runs.

    :param out_dir: the run's directory; the load tools' scripts go in its ``work/``.
    :param tool: the load generator, ``"wrk"`` or ``"ab"``.
    :param progress: where progress lines go (None: nowhere).
    """

    out_dir: Path
    tool: str
    progress: TextIO | None = field(default=sys.stderr)


def stack_key(settings: Mapping[str, Any]) -> tuple:
    """What decides the servers: every knob but the request's and the load's."""
    return tuple(
        sorted(
            (name, value)
            for name, value in settings.items()
            if not name.startswith(("request.", "load."))
        )
    )


@dataclass(frozen=True)
class Check:
    """What the check before loading learned: the headers to load with, the body's size."""

    headers: dict[str, str]
    response_bytes: int


def check_configuration(base_url: str, settings: Mapping[str, Any]) -> Check:
    """Make one request as the load will; raise LabError unless it gets the expected status."""
    url = base_url + settings["request.path"]
    if settings["request.search_texts"]:
        url += "?" + search_query(SEARCH_TEXTS[0])
    headers = {"Accept-Encoding": "gzip"} if settings["request.gzip"] else {}
    if settings["request.conditional"]:
        status, response_headers, _ = _fetch(url, headers)
        etag = response_headers.get("ETag")
        if status != 200 or not etag:
            raise LabError(
                f"GET {url} gave {status} with no ETag: it cannot be requested conditionally"
            )
        headers["If-None-Match"] = etag
    expected = settings["request.expect"] or (304 if settings["request.conditional"] else 200)
    status, _, body = _fetch(url, headers)
    if status != expected:
        raise LabError(f"GET {url} answered {status}, the experiment expects {expected}")
    return Check(headers, len(body))


def _fetch(url: str, headers: Mapping[str, str]) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=dict(headers))
    # No redirect following: a 301 is an answer the experiment should state.
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=CHECK_TIMEOUT) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except (urllib.error.URLError, OSError) as error:
        raise LabError(f"GET {url} failed: {getattr(error, 'reason', error)}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Progress:
    """One line per measured run: where the lab is, and what it just measured.

    :param stream: where the lines go (None: nowhere, only counted).
    :param total_runs: the runs of the whole lab, for the estimate of the time left.
    """

    def __init__(self, stream: TextIO | None, total_runs: int) -> None:
        self.stream, self.total, self.done, self.started = stream, total_runs, 0, time.monotonic()

    def report(
        self,
        experiment: Experiment,
        round: int,
        configuration: Configuration,
        rps: float,
        saturated: bool,
    ) -> None:
        self.done += 1
        if self.stream is None:
            return
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        flag = "  (load generator saturated)" if saturated else ""
        self.stream.write(
            f"[{self.done}/{self.total} {elapsed:4.0f}s, ~{left:.0f}s left] {experiment.id} "
            f"round {round}/{experiment.runs}: {configuration.id} {rps:,.0f} req/s{flag}\n"
        )
        self.stream.flush()


def run_lab(
    experiments: Sequence[Experiment], options: LabOptions, start_stack: StartStack
) -> list[ExperimentResult]:
    """Measure every configuration of every experiment; the stack is always stopped.

    On a LabError or an interruption (Ctrl-C, or SIGTERM as lab.cli turns it) the results
    measured so far are attached to it as ``error.results``.
    """
    results = [ExperimentResult(experiment) for experiment in experiments]
    progress = Progress(options.progress, sum(e.runs * len(e.configurations) for e in experiments))
    workdir = options.out_dir / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    current: tuple[tuple, RunningStack] | None = None
    try:
        for result in results:
            experiment = result.experiment
            for round in range(1, experiment.runs + 1):
                for configuration in experiment.configurations:
                    settings = configuration.settings
                    try:
                        if current is None or current[0] != stack_key(settings):
                            if current is not None:
                                current[1].stop()
                                current = None
                            current = (stack_key(settings), start_stack(settings))
                        check, load, app_cpu = _measure(current[1], settings, options.tool, workdir)
                    except (LabError, LoadError) as error:
                        raise LabError(f"{experiment.id}/{configuration.id}: {error}") from None
                    measured = result.configurations[configuration.id]
                    measured.response_bytes = check.response_bytes
                    result.add_run(configuration.id, load, app_cpu)
                    if experiment.memory:
                        # After the load, so the workers hold what serving made them touch.
                        measured.memory.append(current[1].worker_memory())
                    progress.report(
                        experiment,
                        round,
                        configuration,
                        load.requests_per_second,
                        load.generator_saturated,
                    )
    except (LabError, KeyboardInterrupt) as error:
        error.results = results  # type: ignore[union-attr]
        raise
    finally:
        if current is not None:
            current[1].stop()
    return results


def _measure(
    stack: RunningStack, settings: Mapping[str, Any], tool: str, workdir: Path
) -> tuple[Check, LoadResult, float]:
    """The check, the measured run, and the app server's CPU seconds over that run."""
    base_url = stack.url(settings["request.via"])
    check = check_configuration(base_url, settings)
    spec = LoadSpec(
        base_url + settings["request.path"],
        settings["load.connections"],
        settings["load.threads"],
        settings["load.duration"],
        check.headers,
        SEARCH_TEXTS if settings["request.search_texts"] else (),
    )
    if settings["load.warmup"] > 0:
        run_load(tool, replace(spec, duration=settings["load.warmup"]), workdir)
    cpu_before = stack.app_cpu_seconds()
    load = run_load(tool, spec, workdir)
    return check, load, stack.app_cpu_seconds() - cpu_before
