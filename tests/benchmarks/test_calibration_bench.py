"""A fixed workload that measures how fast the machine is right now.

    pytest tests/benchmarks/test_calibration_bench.py --benchmark-only

It uses nothing from the project, so it only gets slower when the machine
does (other processes, a slower CPU). ``scripts/bench-compare`` divides every
other benchmark's median by this one's, measured in the same run, so a
baseline saved on a quiet machine can be compared with a run on a busy one.
"""

from __future__ import annotations

import json
from operator import itemgetter

import pytest

ROWS = [
    {"number": n, "title": f"Episode {n:04d}: {'x' * (n % 40)}", "tags": ["python", str(n)]}
    for n in range(300)
]


def workload() -> int:
    # The kind of work a request does: build strings, encode and decode JSON, sort.
    decoded = json.loads(json.dumps(ROWS))
    return sorted(decoded, key=itemgetter("title"), reverse=True)[0]["number"]


@pytest.mark.benchmark(group="calibration")
def test_calibration(benchmark):
    assert benchmark(workload) == 299
