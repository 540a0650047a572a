"""The measurements of a lab run, and what they say about the targets.

    result = ExperimentResult(experiment)
    result.add_run("baseline", load_result)          # as the runner measures
    result.ratio("cpus")               # median of the per-round ratios of req/s to the baseline's
    [outcome.verdict for outcome in result.outcomes()]
    # ['met: 6.10 >= 5', 'missed by 12%: 4.40, needs >= 5']

With ``measure="cpu"`` the ratios are of the app's CPU per request (the app
server's CPU time over a run / the requests it served) instead of requests/s.

Ratios are paired by round: the runner measures every configuration once per
round, so run *i* of a configuration and run *i* of the baseline were taken a
minute apart at most, under the same disturbances. The median of those
per-round ratios is steadier than the ratio of two medians on a shared machine,
and their range says how far the comparison itself moved between rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from . import knobs
from .experiment import Experiment, Target
from .loadgen import LoadResult
from .memory import WorkerMemory
from .stats import Summary, summarize


@dataclass
class ConfigurationResult:
    runs: list[LoadResult] = field(default_factory=list)
    #: Size of one response body, from the check made before loading.
    response_bytes: int = 0
    #: Each worker's memory after each measured run (experiments with ``memory = true``).
    memory: list[list[WorkerMemory]] = field(default_factory=list)
    #: The app server's CPU seconds over each measured run (None: not read), as ``runs``.
    app_cpu_seconds: list[float | None] = field(default_factory=list)

    @property
    def summary(self) -> Summary | None:
        return summarize(self.runs) if self.runs else None

    def cpu_per_request(self) -> list[float | None]:
        """The app's CPU seconds per request served, run by run (None: not known)."""
        return [
            cpu / run.requests if cpu is not None and run.requests else None
            for run, cpu in zip(self.runs, self.app_cpu_seconds, strict=True)
        ]

    @property
    def cpu_per_request_median(self) -> float | None:
        known = [cpu for cpu in self.cpu_per_request() if cpu is not None]
        return statistics.median(known) if known else None


@dataclass(frozen=True)
class TargetOutcome:
    """How a target fared.

    For ``<id> within best`` the ratios are the fastest configuration's requests/s over
    ``<id>``'s, round by round, and ``winner`` is its label: ``<id>`` is within the
    winner's per-round range when in some round it was at least as fast (the lowest ratio
    ≤ 1); on a shared machine the two cannot then be told apart.
    """

    target: Target
    #: The per-round ratios (empty when a configuration it compares was not measured).
    ratios: tuple[float, ...]
    winner: str = ""

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool:
        if self.ratio is None:
            return False
        if self.target.operator == "within":
            return min(self.ratios) <= 1
        return self.target.met_by(self.ratio)

    @property
    def inconclusive(self) -> bool:
        """The bound lies between the lowest and highest per-round ratio: a run could flip it."""
        if self.target.operator == "within":
            return False  # the range is the criterion itself
        return len(self.ratios) > 1 and min(self.ratios) <= self.target.bound <= max(self.ratios)

    @property
    def verdict(self) -> str:
        if self.target.operator == "within":
            return self._within_verdict()
        bound = f"{self.target.operator} {self.target.bound:g}"
        if self.ratio is None:
            return f"not measured (needs {bound})"
        if self.met:
            verdict = f"met: {self.ratio:.2f} {bound}"
        else:
            # How far off, relative to the bound: a 4.4 for ">= 5" is 12% short.
            off = abs(self.ratio / self.target.bound - 1) if self.target.bound else float("inf")
            verdict = f"missed by {off:.0%}: {self.ratio:.2f}, needs {bound}"
        if self.inconclusive:
            verdict += (
                f" (inconclusive: per-round ratios {min(self.ratios):.2f}–{max(self.ratios):.2f})"
            )
        return verdict

    def _within_verdict(self) -> str:
        if self.ratio is None:
            return "not measured"
        if set(self.ratios) == {1.0}:  # paired with itself
            return f"met: it is the fastest ({self.winner})"
        by_round = f"{min(self.ratios):.2f}–{max(self.ratios):.2f} by round"
        verdict = f"the fastest, {self.winner}, is {self.ratio:.2f}× it ({by_round})"
        if self.met:
            return f"met: {verdict}"
        off = min(self.ratios) - 1
        return f"missed by {off:.0%}: {verdict}: slower in every round"


@dataclass
class ExperimentResult:
    experiment: Experiment
    configurations: dict[str, ConfigurationResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for configuration in self.experiment.configurations:
            self.configurations.setdefault(configuration.id, ConfigurationResult())

    def add_run(self, id: str, result: LoadResult, app_cpu_seconds: float | None = None) -> None:
        """One measured run of ``id``, and the app server's CPU seconds over it if read."""
        self.configurations[id].runs.append(result)
        self.configurations[id].app_cpu_seconds.append(app_cpu_seconds)

    def summary(self, id: str) -> Summary | None:
        return self.configurations[id].summary

    def paired_ratios(
        self, id: str, against: str = "baseline", measure: str = "rps"
    ) -> tuple[float, ...]:
        """Requests/s of ``id`` over ``against``'s, round by round; with ``measure="cpu"``,
        the app's CPU per request of ``id`` over ``against``'s."""

        def per_round(of: str) -> list[float | None]:
            measured = self.configurations[of]
            if measure == "cpu":
                return measured.cpu_per_request()
            return [run.requests_per_second for run in measured.runs]

        values, bases = per_round(id), per_round(against)
        # An interrupted lab may have measured one more round of one than of the other.
        return tuple(
            value / base
            for value, base in zip(values, bases, strict=False)
            if value is not None and base
        )

    def ratio(self, id: str, against: str = "baseline", measure: str = "rps") -> float | None:
        ratios = self.paired_ratios(id, against, measure)
        return statistics.median(ratios) if ratios else None

    def fastest(self) -> str | None:
        """The id of the configuration with the highest ratio to the baseline (None: none run)."""
        measured = {
            c.id: ratio for c in self.experiment.configurations if (ratio := self.ratio(c.id))
        }
        return max(measured, key=measured.__getitem__) if measured else None

    def outcomes(self) -> list[TargetOutcome]:
        outcomes = []
        for target in self.experiment.targets:
            if target.operator == "within":
                winner = self.fastest()
                ratios = self.paired_ratios(winner, target.numerator) if winner else ()
                label = self.experiment.configuration(winner).label if winner else ""
                outcomes.append(TargetOutcome(target, ratios, label))
            else:
                ratios = self.paired_ratios(target.numerator, target.denominator, target.measure)
                outcomes.append(TargetOutcome(target, ratios))
        return outcomes

    def as_dict(self) -> dict[str, Any]:
        experiment = self.experiment
        return {
            "id": experiment.id,
            "file": str(experiment.path),
            "title": experiment.title,
            "about": experiment.about,
            "runs_per_configuration": experiment.runs,
            "configurations": [
                {
                    "id": configuration.id,
                    "label": configuration.label,
                    "kind": configuration.kind,
                    "changes": knobs.describe(configuration.changes),
                    "settings": dict(configuration.settings),
                    "response_bytes": self.configurations[configuration.id].response_bytes,
                    "runs": [run.as_dict() for run in self.configurations[configuration.id].runs],
                    "worker_memory": [
                        [worker.as_dict() for worker in workers]
                        for workers in self.configurations[configuration.id].memory
                    ],
                    "summary": summary.as_dict()
                    if (summary := self.summary(configuration.id))
                    else None,
                    "ratio_to_baseline": self.ratio(configuration.id),
                    "ratios_by_round": list(self.paired_ratios(configuration.id)),
                    "app_cpu_seconds": self.configurations[configuration.id].app_cpu_seconds,
                    "app_cpu_per_request_us": [
                        None if cpu is None else cpu * 1e6
                        for cpu in self.configurations[configuration.id].cpu_per_request()
                    ],
                    "app_cpu_ratios_by_round": list(
                        self.paired_ratios(configuration.id, measure="cpu")
                    ),
                }
                for configuration in experiment.configurations
            ],
            "targets": [
                {
                    "label": outcome.target.label,
                    "require": outcome.target.expression,
                    "ratio": outcome.ratio,
                    "ratios_by_round": list(outcome.ratios),
                    "met": outcome.met,
                    "inconclusive": outcome.inconclusive,
                    "verdict": outcome.verdict,
                }
                for outcome in self.outcomes()
            ],
        }
