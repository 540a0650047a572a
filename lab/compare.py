"""Save a pytest-benchmark baseline, then fail on a regression against it.

    python -m lab.compare --save            # measure tests/benchmarks, keep it as the baseline
    python -m lab.compare                   # measure again; exit 1 if any got >15% slower
    python -m lab.compare --threshold 25 -- -k feed    # pytest arguments after --
    python -m lab.compare --absolute        # raw medians, pytest-benchmark's own compare-fail

``scripts/bench-compare`` runs this in the project's venv. Baselines live in
pytest-benchmark's storage (``.benchmarks/``, one folder per machine).

By default medians are compared as ratios: each benchmark's median is divided
by the median of ``test_calibration`` (tests/benchmarks/test_calibration_bench.py,
a fixed workload that uses nothing from the project) measured in the same
run. A machine that is busier now than when the baseline was saved slows
both alike, and the ratio cancels it; a slower code path moves only its own.
``--absolute`` wraps ``--benchmark-compare-fail=median:N%`` instead, which
is right on a quiet, dedicated machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE = "test_calibration"
BASELINE_NAME = "baseline"
DEFAULT_THRESHOLD = 15.0
#: pytest-benchmark options that make every benchmark short, for CI's proof that they run.
QUICK_OPTIONS = ["--benchmark-max-time=0.1", "--benchmark-min-rounds=3", "--benchmark-warmup=off"]


class CompareError(RuntimeError):
    """No baseline, a malformed benchmark file, or no reference to normalize by."""


@dataclass(frozen=True)
class Comparison:
    name: str
    baseline_seconds: float
    current_seconds: float
    #: Current over baseline, each first divided by its run's reference (or not, if absolute).
    change: float
    regressed: bool


def medians(document: dict[str, Any]) -> dict[str, float]:
    """Benchmark full name -> median seconds, from a pytest-benchmark JSON document."""
    try:
        return {
            bench["fullname"]: float(bench["stats"]["median"]) for bench in document["benchmarks"]
        }
    except (KeyError, TypeError, ValueError) as error:
        raise CompareError(f"not a pytest-benchmark JSON file (missing {error})") from None


def compare(
    baseline: dict[str, float],
    current: dict[str, float],
    threshold_percent: float,
    reference: str | None = REFERENCE,
) -> list[Comparison]:
    """Compare the benchmarks present in both runs; ``reference=None`` compares raw medians."""

    def scale(run: dict[str, float], which: str) -> float:
        if reference is None:
            return 1.0
        matches = [seconds for name, seconds in run.items() if name.split("::")[-1] == reference]
        if not matches:
            raise CompareError(
                f"the {which} run has no {reference} benchmark to normalize by "
                f"(run it too, or use --absolute)"
            )
        return matches[0]

    base_scale, current_scale = scale(baseline, "baseline"), scale(current, "current")
    limit = 1 + threshold_percent / 100
    comparisons = []
    for name in sorted(baseline.keys() & current.keys()):
        if reference is not None and name.split("::")[-1] == reference:
            continue
        change = (current[name] / current_scale) / (baseline[name] / base_scale)
        comparisons.append(Comparison(name, baseline[name], current[name], change, change > limit))
    return comparisons


def format_table(comparisons: Sequence[Comparison], relative: bool) -> str:
    header = "change vs calibration" if relative else "change"
    width = max([len(c.name) for c in comparisons] + [9])
    lines = [f"{'benchmark':<{width}}  {'baseline':>10}  {'current':>10}  {header}"]
    for c in comparisons:
        flag = "  REGRESSION" if c.regressed else ""
        lines.append(
            f"{c.name:<{width}}  {c.baseline_seconds * 1e6:>8.1f}us  {c.current_seconds * 1e6:>8.1f}us"
            f"  {c.change - 1:+.1%}{flag}"
        )
    return "\n".join(lines)


def latest_baseline(storage: Path) -> Path:
    """The newest ``NNNN_baseline.json`` that ``--save`` wrote under ``storage``."""
    saved = sorted(storage.glob(f"*/*_{BASELINE_NAME}.json"), key=lambda path: path.stat().st_mtime)
    if not saved:
        raise CompareError(
            f"no saved baseline under {storage}/: run with --save first (e.g. on main)"
        )
    return saved[-1]


def _pytest(arguments: Sequence[str]) -> int:
    return subprocess.call(
        [sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", *arguments]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", action="store_true", help="measure and save the baseline")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="PERCENT",
        help="fail when a benchmark is this much slower (default %(default)g)",
    )
    parser.add_argument(
        "--absolute", action="store_true", help="compare raw medians, not ratios to the calibration"
    )
    parser.add_argument("--quick", action="store_true", help="short measurements (CI's smoke run)")
    parser.add_argument(
        "--storage", type=Path, default=Path(".benchmarks"), help="pytest-benchmark's storage"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("var/bench/compare.json"),
        help="where the current run's JSON is written",
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.threshold <= 0:
        parser.error("--threshold must be above 0")
    common = [
        f"--benchmark-storage={args.storage}",
        *(QUICK_OPTIONS if args.quick else []),
        *args.pytest_args,
    ]

    if args.save:
        status = _pytest([f"--benchmark-save={BASELINE_NAME}", *common])
        if status == 0:
            print(f"bench-compare: baseline saved as {latest_baseline(args.storage)}")
        return status

    try:
        baseline_path = latest_baseline(args.storage)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run_id = baseline_path.name.split("_")[0]
        extra = [f"--benchmark-compare={run_id}", f"--benchmark-json={args.out}"]
        if args.absolute:
            extra.append(f"--benchmark-compare-fail=median:{args.threshold:g}%")
        status = _pytest([*extra, *common])
        if status != 0 or args.absolute:
            return status
        comparisons = compare(
            medians(json.loads(baseline_path.read_text())),
            medians(json.loads(args.out.read_text())),
            args.threshold,
        )
    except (CompareError, OSError, json.JSONDecodeError) as error:
        print(f"bench-compare: {error}", file=sys.stderr)
        return 2
    print(format_table(comparisons, relative=True))
    regressions = [c for c in comparisons if c.regressed]
    print(
        f"bench-compare: {len(regressions)} regression(s) beyond {args.threshold:g}% "
        f"against {baseline_path} ({len(comparisons)} compared)"
    )
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
