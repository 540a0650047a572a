"""Save a pytest-benchmark baseline, then fail on a regression against it.

    python -m lab.compare --save            # measure tests/benchmarks, keep it as the baseline
    python -m lab.compare                   # measure again; exit 1 if any got >15% slower
    python -m lab.compare --threshold 25 -- -k feed    # pytest arguments after --
    python -m lab.compare --absolute        # raw medians, pytest-benchmark's own compare-fail

``scripts/bench-compare`` runs this in the project's venv. Baselines live in
pytest-benchmark's storage (``.benchmarks/``, one folder per machine id: system,
Python x.y, bits); only this interpreter's folder is compared against.

By default medians are compared as ratios: each benchmark's median is divided
by the median of ``test_calibration`` (tests/benchmarks/test_calibration_bench.py,
a fixed workload that uses nothing from the project) measured in the same
run. A machine that is busier now than when the baseline was saved slows
both alike, and the ratio cancels it; a slower code path moves only its own.
A selection (``-- -k feed``) that leaves the calibration out gets it measured
by a second pytest run. What else differs between the two runs (another
machine, other pytest-benchmark settings such as ``--quick`` in one only) is
printed as a warning: the ratios cannot tell it from the code.
``--absolute`` wraps ``--benchmark-compare-fail=median:N%`` instead, which
is right on a quiet, dedicated machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pytest_benchmark.utils import get_machine_id

from .command import run_command

REFERENCE = "test_calibration"
BASELINE_NAME = "baseline"
DEFAULT_THRESHOLD = 15.0
#: pytest-benchmark options that make every benchmark short, for CI's proof that they run.
QUICK_OPTIONS = ["--benchmark-max-time=0.1", "--benchmark-min-rounds=3", "--benchmark-warmup=off"]
CALIBRATION_FILE = "tests/benchmarks/test_calibration_bench.py"
#: What in pytest-benchmark's machine_info tells two machines (or interpreters) apart.
MACHINE_KEYS = {
    "node": ("node",),
    "python": ("python_version",),
    "cpu": ("cpu", "brand_raw"),
    "cpus": ("cpu", "count"),
}


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
        matches = [seconds for name, seconds in run.items() if _test_name(name) == reference]
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
        if reference is not None and _test_name(name) == reference:
            continue
        change = (current[name] / current_scale) / (baseline[name] / base_scale)
        comparisons.append(Comparison(name, baseline[name], current[name], change, change > limit))
    return comparisons


def not_compared(baseline: dict[str, float], current: dict[str, float], shown: int = 5) -> str:
    """What only one of the runs measured (a -k selection, a skipped backend, a renamed
    benchmark), named up to ``shown`` each; "" when both measured the same."""

    def named(names: set[str]) -> str:
        listed = sorted(names)
        return ", ".join(listed[:shown] + (["…"] if len(listed) > shown else []))

    parts = [
        f"{len(names)} only in {which} ({named(names)})"
        for which, names in (
            ("the baseline", baseline.keys() - current.keys()),
            ("this run", current.keys() - baseline.keys()),
        )
        if names
    ]
    return f"not compared: {', '.join(parts)}" if parts else ""


def format_table(comparisons: Sequence[Comparison], relative: bool) -> str:
    header = "change vs calibration" if relative else "change"
    width = max([len(c.name) for c in comparisons] + [9])
    lines = [f"{'benchmark':<{width}}  {'baseline':>10}  {'current':>10}  {header}"]
    for c in comparisons:
        flag = "  REGRESSION" if c.regressed else ""
        lines.append(
            f"{c.name:<{width}}  {c.baseline_seconds * 1e6:>8.1f}us  "
            f"{c.current_seconds * 1e6:>8.1f}us  {c.change - 1:+.1%}{flag}"
        )
    return "\n".join(lines)


def machine_id() -> str:
    """pytest-benchmark's folder for this interpreter (e.g. ``Linux-CPython-3.11-64bit``)."""
    return str(get_machine_id())


def latest_baseline(storage: Path) -> Path:
    """The newest ``NNNN_baseline.json`` that ``--save`` wrote under ``storage`` for this
    machine id: pytest-benchmark saves each interpreter's runs in a folder of their own."""

    def saved(folder: str) -> list[Path]:
        found = storage.glob(f"{folder}/*_{BASELINE_NAME}.json")
        return sorted(found, key=lambda path: path.stat().st_mtime)

    ours = saved(machine_id())
    if ours:
        return ours[-1]
    others = sorted({path.parent.name for path in saved("*")})
    if others:
        raise CompareError(
            f"no saved baseline for {machine_id()} under {storage}/ (there are for "
            f"{', '.join(others)}): run with --save first, with this Python on this machine"
        )
    raise CompareError(f"no saved baseline under {storage}/: run with --save first (e.g. on main)")


def _lookup(document: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = document
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def unlike(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two pytest-benchmark documents besides the code: the machine,
    and the settings (``options``) of the benchmarks both ran; one line for each."""
    lines = []
    machine = [
        f"{name} {before}, now {after}"
        for name, path in MACHINE_KEYS.items()
        if (before := _lookup(baseline.get("machine_info", {}), path))
        != (after := _lookup(current.get("machine_info", {}), path))
    ]
    if machine:
        lines.append(f"the machine: {'; '.join(machine)}")
    options: dict[str, tuple[Any, Any]] = {}
    now = {
        bench.get("fullname"): bench.get("options", {}) for bench in current.get("benchmarks", [])
    }
    for bench in baseline.get("benchmarks", []):
        after_options = now.get(bench.get("fullname"))
        if after_options is None:
            continue
        for key, before in bench.get("options", {}).items():
            if key not in options and after_options.get(key) != before:
                options[key] = (before, after_options.get(key))
    if options:
        settings = "; ".join(f"{key} {a}, now {b}" for key, (a, b) in sorted(options.items()))
        lines.append(f"pytest-benchmark's settings: {settings}")
    return lines


def _test_name(fullname: str) -> str:
    """A benchmark's test function (with its parameters), without the file it is in."""
    return fullname.split("::")[-1]


def _writable(option: str, path: Path, directory: Path) -> None:
    """Make ``directory`` for ``option``'s ``path`` before any benchmark runs, or say why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CompareError(f"{option} {path}: cannot write there ({error.strerror})") from None


def _pytest(arguments: Sequence[str], target: str = "tests/benchmarks") -> int:
    return subprocess.call([sys.executable, "-m", "pytest", target, "--benchmark-only", *arguments])


def with_calibration(path: Path, options: Sequence[str]) -> None:
    """Add the calibration benchmark to the pytest-benchmark file ``path`` if the run left it
    out (``-- -k feed``): it is measured by a pytest run of its own, with ``options``."""
    document = json.loads(path.read_text())
    names = [bench.get("fullname", "") for bench in document.get("benchmarks", [])]
    if any(_test_name(name) == REFERENCE for name in names):
        return
    calibration = path.with_name(f"{path.stem}.calibration.json")
    try:
        if _pytest([f"--benchmark-json={calibration}", *options], CALIBRATION_FILE) != 0:
            raise CompareError(f"measuring {REFERENCE} ({CALIBRATION_FILE}) failed")
        document["benchmarks"] += json.loads(calibration.read_text())["benchmarks"]
    finally:
        calibration.unlink(missing_ok=True)
    path.write_text(json.dumps(document, indent=4))


def _warn_if_unlike(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    differences = unlike(baseline, current)
    if differences:
        click.echo(
            "bench-compare: warning: the baseline was measured with other settings or on "
            "another machine; the changes below include that, not the code alone:\n  "
            + "\n  ".join(differences),
            err=True,
        )


@click.command(
    "bench-compare",
    help="Measure tests/benchmarks and fail on a regression against the saved baseline. "
    "Arguments after -- go to pytest.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--save", is_flag=True, help="Measure and save the baseline.")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    metavar="PERCENT",
    help="Fail when a benchmark is this much slower.",
)
@click.option(
    "--absolute", is_flag=True, help="Compare raw medians, not ratios to the calibration."
)
@click.option("--quick", is_flag=True, help="Short measurements (CI's smoke run).")
@click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".benchmarks"),
    show_default=True,
    help="pytest-benchmark's storage.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("var/bench/compare.json"),
    show_default=True,
    help="Where the current run's JSON is written.",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def compare_command(
    save: bool,
    threshold: float,
    absolute: bool,
    quick: bool,
    storage: Path,
    out: Path,
    pytest_args: tuple[str, ...],
) -> int:
    """The command behind ``scripts/bench-compare``; returns the exit status."""
    timing = QUICK_OPTIONS if quick else []
    common = [f"--benchmark-storage={storage}", *timing, *pytest_args]

    try:
        if save:
            _writable("--storage", storage, storage)
            status = _pytest([f"--benchmark-save={BASELINE_NAME}", *common])
            if status == 0:
                baseline_path = latest_baseline(storage)
                with_calibration(baseline_path, timing)
                click.echo(f"bench-compare: baseline saved as {baseline_path}")
            return status

        baseline_path = latest_baseline(storage)
        _writable("--out", out, out.parent)
        out.unlink(missing_ok=True)  # a run that writes none is not read as the last one's
        # The file itself, not its number: pytest-benchmark's own table compares the same one.
        extra = [f"--benchmark-compare={baseline_path}", f"--benchmark-json={out}"]
        if absolute:
            extra.append(f"--benchmark-compare-fail=median:{threshold:g}%")
        status = _pytest([*extra, *common])
        if absolute and out.exists():
            _warn_if_unlike(json.loads(baseline_path.read_text()), json.loads(out.read_text()))
        if status != 0 or absolute:
            return status
        with_calibration(out, timing)
        baseline_document = json.loads(baseline_path.read_text())
        current_document = json.loads(out.read_text())
        baseline_medians, current_medians = medians(baseline_document), medians(current_document)
        comparisons = compare(baseline_medians, current_medians, threshold)
        _warn_if_unlike(baseline_document, current_document)
    except (CompareError, OSError, json.JSONDecodeError) as error:
        click.echo(f"bench-compare: {error}", err=True)
        return 2
    click.echo(format_table(comparisons, relative=True))
    regressions = [c for c in comparisons if c.regressed]
    unmatched = not_compared(baseline_medians, current_medians)
    click.echo(
        f"bench-compare: {len(regressions)} regression(s) beyond {threshold:g}% "
        f"against {baseline_path} ({len(comparisons)} compared{'; ' if unmatched else ''}"
        f"{unmatched})"
    )
    return 1 if regressions else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bench-compare`` with ``argv`` (default: ``sys.argv[1:]``); returns its exit status."""
    return run_command(compare_command, argv, "bench-compare")


if __name__ == "__main__":
    sys.exit(main())
