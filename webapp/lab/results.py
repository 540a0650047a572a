"""The measurements of a lab run, and what they say about the targets.

    result = ExperimentResult(experiment)
    result.add_run("baseline", load_result)          # as the runner measures
    result.ratio("cpus")                             # median req/s against the baseline's
    [outcome.verdict for outcome in result.outcomes()]
    # ['met: 6.10 >= 5', 'missed by 12%: 4.40, needs >= 5']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import knobs
from .experiment import Experiment, Target
from .loadgen import LoadResult
from .stats import Summary, ratio, summarize


@dataclass
class ConfigurationResult:
    runs: list[LoadResult] = field(default_factory=list)
    #: Size of one response body, from the check made before loading.
    response_bytes: int = 0

    @property
    def summary(self) -> Summary | None:
        return summarize(self.runs) if self.runs else None


@dataclass(frozen=True)
class TargetOutcome:
    target: Target
    #: None when a configuration it compares was not measured.
    ratio: float | None

    @property
    def met(self) -> bool:
        return self.ratio is not None and self.target.met_by(self.ratio)

    @property
    def verdict(self) -> str:
        bound = f"{self.target.operator} {self.target.bound:g}"
        if self.ratio is None:
            return f"not measured (needs {bound})"
        if self.met:
            return f"met: {self.ratio:.2f} {bound}"
        # How far off, relative to the bound: a 4.4 for ">= 5" is 12% short.
        off = abs(self.ratio / self.target.bound - 1) if self.target.bound else float("inf")
        return f"missed by {off:.0%}: {self.ratio:.2f}, needs {bound}"


@dataclass
class ExperimentResult:
    experiment: Experiment
    configurations: dict[str, ConfigurationResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for configuration in self.experiment.configurations:
            self.configurations.setdefault(configuration.id, ConfigurationResult())

    def add_run(self, id: str, result: LoadResult) -> None:
        self.configurations[id].runs.append(result)

    def summary(self, id: str) -> Summary | None:
        return self.configurations[id].summary

    def ratio(self, id: str, against: str = "baseline") -> float | None:
        summary, base = self.summary(id), self.summary(against)
        return ratio(summary, base) if summary and base else None

    def outcomes(self) -> list[TargetOutcome]:
        return [TargetOutcome(target, self.ratio(target.numerator, target.denominator))
                for target in self.experiment.targets]

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
                    "summary": summary.as_dict() if (summary := self.summary(configuration.id)) else None,
                    "ratio_to_baseline": self.ratio(configuration.id),
                }
                for configuration in experiment.configurations
            ],
            "targets": [
                {"label": outcome.target.label, "require": outcome.target.expression,
                 "ratio": outcome.ratio, "met": outcome.met, "verdict": outcome.verdict}
                for outcome in self.outcomes()
            ],
        }
