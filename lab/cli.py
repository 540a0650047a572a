"""``scripts/bench``: run experiments against the real stack and write the report.

    scripts/bench                                  # every lab/experiments/*.toml
    scripts/bench uwsgi-processes feed             # by name (file stem) or path
    scripts/bench --quick                          # one short run of each configuration (CI's smoke)
    scripts/bench --list                           # check the files, print their configurations
    scripts/bench --tool ab --out /tmp/lab         # ab instead of wrk; output elsewhere

Output in ``var/bench/<timestamp>/``: ``report.md``, ``runs.json``, ``ratios.png``.
Exit status: 0 when everything was measured (missed targets are reported, not
fatal), 1 when the lab could not run (no load tool, a port in use, a stack that
did not start), 2 for a malformed experiment file or bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import knobs
from .experiment import Experiment, ExperimentError, load_experiment
from .loadgen import LoadError, find_tool
from .report import write_report
from .runner import LabError, LabOptions, run_lab
from .servers import LabStacks

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = PROJECT_ROOT / "lab" / "experiments"
#: --quick: each configuration once, for 1 s, no warm-up.
QUICK = {"runs": 1, "duration": 1, "warmup": 0}


def find_experiments(names: Sequence[str]) -> list[Path]:
    """Paths for experiment names (file stems in lab/experiments) or paths; all when none."""
    if not names:
        paths = sorted(EXPERIMENTS_DIR.glob("*.toml"))
        if not paths:
            raise ExperimentError(f"no experiment files in {EXPERIMENTS_DIR}")
        return paths
    found = []
    for name in names:
        path = Path(name)
        if not path.exists() and not name.endswith(".toml"):
            path = EXPERIMENTS_DIR / f"{name}.toml"
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(EXPERIMENTS_DIR.glob("*.toml")))
            raise ExperimentError(f"no experiment {name!r} (known: {known or 'none'})")
        found.append(path)
    return found


def machine_description(tool: str, quick: bool) -> dict[str, Any]:
    def first_line(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "not found"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else "?"
        )

    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "load tool": first_line([tool, "-V" if tool == "ab" else "--version"]),
        "commit": first_line(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"]),
        "mode": "quick (1 run of 1 s per configuration: a smoke test, not a measurement)"
        if quick
        else "full",
    }


def _print_experiments(experiments: Sequence[Experiment]) -> None:
    for experiment in experiments:
        print(
            f"{experiment.id}: {experiment.title} ({experiment.runs} runs, {len(experiment.targets)} targets)"
        )
        for configuration in experiment.configurations:
            print(
                f"  {configuration.id:<18} {configuration.label}  [{knobs.describe(configuration.changes)}]"
            )


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # Turned into an exception so every `finally` that stops a server runs.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Knobs:\n" + "\n".join(f"  {k.name:<26} {k.help}" for k in knobs.KNOBS.values()),
    )
    parser.add_argument(
        "experiments", nargs="*", metavar="EXPERIMENT", help="names or paths (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="one 1-second run per configuration")
    parser.add_argument(
        "--list", action="store_true", help="check the experiment files and list them"
    )
    parser.add_argument(
        "--tool", choices=("wrk", "ab"), help="the load generator (default: wrk, else ab)"
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: var/bench/<timestamp>)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="nginx's port; uWSGI's HTTP socket takes the next (default: any free ports)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL"),
        help="a PostgreSQL database the lab may create a schema in "
        "(default: $BENCH_DATABASE_URL, else $TEST_DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65534:
        parser.error("--port must be from 1 to 65534 (or 0 for any free port)")

    try:
        experiments = [load_experiment(path) for path in find_experiments(args.experiments)]
    except ExperimentError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    if args.list:
        _print_experiments(experiments)
        return 0
    if args.quick:
        experiments = [experiment.shortened(**QUICK) for experiment in experiments]

    previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(experiments, args)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _run(experiments: Sequence[Experiment], args: argparse.Namespace) -> int:
    out_dir = args.out or PROJECT_ROOT / "var" / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        tool = find_tool(args.tool)
        machine = machine_description(tool, args.quick)
        with LabStacks(
            experiments, out_dir / "work", port=args.port, postgres_url=args.postgres_url
        ) as stacks:
            machine.update(stacks.versions())
            results = run_lab(experiments, LabOptions(out_dir=out_dir, tool=tool), stacks.start)
    except (LabError, LoadError) as error:
        print(f"bench: {error}", file=sys.stderr)
        results = getattr(error, "results", None)
        if results is not None and any(
            r.summary(c.id) for r in results for c in r.experiment.configurations
        ):
            paths = write_report(out_dir, results, machine | {"incomplete": str(error)})
            print(
                f"bench: what was measured before that is in {paths['markdown']}", file=sys.stderr
            )
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    paths = write_report(out_dir, results, machine)
    print(
        f"bench: report {paths['markdown']}\n       runs   {paths['json']}\n       chart  "
        f"{paths['chart'] or 'skipped (matplotlib is not installed)'}"
    )
    for result in results:
        for outcome in result.outcomes():
            print(
                f"  {'MET   ' if outcome.met else 'MISSED'} {result.experiment.id}: {outcome.target.label}: {outcome.verdict}"
            )
    return 0
