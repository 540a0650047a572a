"""What several runs of one configuration add up to.

    summary = summarize(results)          # LoadResults of the measured runs
    summary.rps_median, summary.spread    # spread: (max - min) / median of requests/s

Medians, because a run disturbed by something else on the machine should not
move the figure; the spread shows how disturbed the runs were.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .loadgen import LoadResult


@dataclass(frozen=True)
class Summary:
    runs: int
    rps_median: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    errors: int
    bad_status: int
    #: In how many runs the load generator used (nearly) all the CPU it could.
    saturated_runs: int
    #: Median of the runs' p99 / p50.
    tail_ratio: float = 0.0
    #: In how many runs p99 was more than TAIL_RATIO × p50.
    long_tail_runs: int = 0

    @property
    def spread(self) -> float:
        return (self.rps_max - self.rps_min) / self.rps_median if self.rps_median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"spread": self.spread}


def summarize(results: Sequence[LoadResult]) -> Summary:
    """The summary of one configuration's measured runs (at least one)."""
    if not results:
        raise ValueError("no runs to summarize")
    rates = [result.requests_per_second for result in results]
    return Summary(
        runs=len(results),
        rps_median=statistics.median(rates),
        rps_min=min(rates),
        rps_max=max(rates),
        p50_ms=statistics.median(result.p50_ms for result in results),
        p99_ms=statistics.median(result.p99_ms for result in results),
        errors=sum(result.errors for result in results),
        bad_status=sum(result.bad_status for result in results),
        saturated_runs=sum(result.generator_saturated for result in results),
        tail_ratio=statistics.median(result.tail_ratio for result in results),
        long_tail_runs=sum(result.long_tail for result in results),
    )
