"""``scripts/bench``: run experiments against the real stack and write the report.

    scripts/bench                                  # every lab/experiments/*.toml
    scripts/bench uwsgi-processes feed             # by name (file stem) or path
    scripts/bench --quick                          # each configuration once, briefly (CI's smoke)
    scripts/bench --list                           # check the files, print their configurations
    scripts/bench --tool ab --out /tmp/lab         # ab instead of wrk; output elsewhere

Output in ``var/bench/<timestamp>/``: ``report.md``, ``runs.json``, ``ratios.png``.
Exit status: 0 when everything was measured (missed targets are reported, not
fatal), 1 when the lab could not run (no load tool, a port in use, a stack that
did not start), 2 for a malformed experiment file or bad arguments.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import front, knobs
from .command import run_command
from .experiment import Configuration, Experiment, ExperimentError, load_experiment
from .loadgen import LoadError, find_tool
from .report import write_report
from .runner import LabError, LabOptions, run_lab
from .servers import LabStacks

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = PROJECT_ROOT / "lab" / "experiments"
#: Why a configuration on PostgreSQL was left out, and how to include it.
POSTGRES_SKIPPED = (
    "needs PostgreSQL and no database was given; to include it, pass --postgres-url or set "
    "BENCH_DATABASE_URL (a database the lab may create a schema in)"
)
#: --quick: each configuration once, for 1 s, no warm-up (and on an experiment's first route).
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
        click.echo(
            f"{experiment.id}: {experiment.title} "
            f"({experiment.runs} runs, {len(experiment.targets)} targets)"
        )
        if experiment.routes:
            click.echo(f"  on each of: {', '.join(experiment.routes)}")
        for configuration in experiment.configurations:
            changes = knobs.describe(configuration.changes)
            click.echo(f"  {configuration.id:<18} {configuration.label}  [{changes}]")


def leave_out(
    experiments: Sequence[Experiment], needs: Callable[[Configuration], str | None], what: str
) -> tuple[list[Experiment], list[str]]:
    """The experiments less the configurations ``needs`` names a missing part for, and a line
    for each left out (``needs`` returns why it is not measured and how to include it);
    ``what`` describes those configurations in the line for a target left unchecked."""
    kept, skipped = [], []
    for experiment in experiments:
        reasons = {c.id: reason for c in experiment.configurations if (reason := needs(c))}
        if not reasons:
            kept.append(experiment)
            continue
        if experiment.baseline.id in reasons:
            skipped.append(
                f"{experiment.id}: not measured: its baseline {reasons[experiment.baseline.id]}"
            )
            continue
        kept.append(experiment.without(reasons))
        for configuration in experiment.configurations:
            if configuration.id in reasons:
                skipped.append(
                    f"{experiment.id}/{configuration.id} ({configuration.label}): not measured: "
                    f"{reasons[configuration.id]}"
                )
        for target in experiment.targets:
            if {target.numerator, target.denominator} & set(reasons):
                skipped.append(
                    f"{experiment.id}: target {target.expression!r} not checked: it compares "
                    f"a configuration {what}"
                )
    return kept, skipped


def without_postgresql(experiments: Sequence[Experiment]) -> tuple[list[Experiment], list[str]]:
    """The experiments less what needs PostgreSQL, and a line for each part left out.

    A fresh machine has no PostgreSQL database for the lab: the rest is measured, and the
    report says what was not and how to include it.
    """
    return leave_out(
        experiments,
        lambda c: POSTGRES_SKIPPED if c.settings["app.database"] == "postgresql" else None,
        "on PostgreSQL",
    )


def quick_lists(experiments: Sequence[Experiment]) -> tuple[list[Experiment], list[str]]:
    """The experiments as ``--quick`` runs them (less what their file's ``quick`` list
    leaves out), and a line for each experiment saying what that left out."""
    kept, skipped = [], []
    for experiment in experiments:
        quick = experiment.for_quick()
        kept.append(quick)
        left_out = len(experiment.configurations) - len(quick.configurations)
        if left_out:
            ran = ", ".join(c.id for c in quick.configurations)
            unchecked = len(experiment.targets) - len(quick.targets)
            skipped.append(
                f"{experiment.id}: --quick measures only {ran} (its file's quick list): "
                f"{left_out} other configuration(s) not measured, {unchecked} target(s) not "
                "checked"
            )
    return kept, skipped


def without_missing_servers(
    experiments: Sequence[Experiment],
) -> tuple[list[Experiment], list[str]]:
    """The experiments less the configurations whose app server (gunicorn, granian) is not
    installed, and a line for each saying how to install it."""

    def needs(configuration: Configuration) -> str | None:
        server = configuration.settings["app.server"]
        if server in ("gunicorn", "granian") and not front.installed(server):
            return f"{server} is not installed; to include it: {front.INSTALL_HINT}"
        return None

    return leave_out(experiments, needs, "whose server is not installed")


class _Interruption:
    """The handler of Ctrl-C and SIGTERM during a run: the first is a KeyboardInterrupt, so
    every `finally` that stops a server runs; the next ones are ignored, so that an impatient
    second Ctrl-C cannot cut that stopping short and leave servers behind (as scripts/serve)."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.raised:
            self.raised = True
            raise KeyboardInterrupt


@dataclass(frozen=True)
class RunOptions:
    """What the command line says about a run, beyond which experiments.

    :param tool: ``--tool``; None picks wrk, else ab.
    :param out: ``--out``; None is ``var/bench/<timestamp>``.
    :param port: ``--port``; 0 for free ports.
    :param postgres_url: ``--postgres-url`` or its environment variables.
    :param quick: ``--quick``, named in the report.
    :param skipped: why some configurations are not measured, one line each, for the report.
    """

    tool: str | None
    out: Path | None
    port: int
    postgres_url: str | None
    quick: bool
    skipped: Sequence[str] = ()


def _knobs_help() -> str:
    # A server or app knob with no default keeps deploy/'s setting; request.expect's is "auto".
    kept = [
        k.name
        for k in knobs.KNOBS.values()
        if k.default is None and not k.name.startswith("request.")
    ]
    groups = list(
        dict.fromkeys(n.split(".")[0] for n in kept if n.startswith(("uwsgi.", "nginx.")))
    )
    named = [f"{group}.*" for group in groups] + [n for n in kept if n.split(".")[0] not in groups]
    kept_line = f"{', '.join(named[:-1])} and {named[-1]} left unset keep what deploy/ configures."

    def line(knob: knobs.Knob) -> str:
        default = "" if knob.default is None else f" (default: {knobs.toml_value(knob.default)})"
        return f"{knob.name:<26} {knob.help}{default}"

    # "\b" keeps click from rewrapping the list into one paragraph.
    return "Knobs:\n\n\b\n" + "\n".join([kept_line, *(line(k) for k in knobs.KNOBS.values())])


@click.command(
    "bench",
    help="Run experiments against the real stack and write the report.",
    epilog=_knobs_help(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("experiments", nargs=-1, metavar="[EXPERIMENT]...")
@click.option("--quick", is_flag=True, help="One 1-second run per configuration.")
@click.option("--list", "list_only", is_flag=True, help="Check the experiment files and list them.")
@click.option(
    "--tool", type=click.Choice(["wrk", "ab"]), help="The load generator (default: wrk, else ab)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: var/bench/<timestamp>).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65534),
    default=0,
    help="nginx's port; uWSGI's HTTP socket takes the next (default: any free ports).",
)
@click.option(
    "--postgres-url",
    default=lambda: os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL"),
    help="A PostgreSQL database the lab may create a schema in "
    "(default: $BENCH_DATABASE_URL, else $TEST_DATABASE_URL).",
)
def bench_command(
    experiments: tuple[str, ...],
    quick: bool,
    list_only: bool,
    tool: str | None,
    out: Path | None,
    port: int,
    postgres_url: str | None,
) -> int:
    """The command behind ``scripts/bench``; returns the exit status (see the module docstring)."""
    try:
        files = [load_experiment(path) for path in find_experiments(experiments)]
    except ExperimentError as error:
        click.echo(f"bench: {error}", err=True)
        return 2
    if list_only:
        _print_experiments(files)
        return 0
    skipped: list[str] = []
    if quick:
        # Named ones run even so: --quick on one experiment is how to try it out.
        skipped += [
            f"{e.id}: not measured: left out of --quick (its file says quick = false)"
            for e in files
            if not e.quick and not experiments
        ]
        files, left_out = quick_lists([e for e in files if e.quick or experiments])
        skipped += left_out
    # --quick proves each configuration starts and answers: on the first route only (and
    # only those its file's `quick` list names, if it has one).
    loaded: list[Experiment] = []
    for experiment in files:
        routes = experiment.per_route()
        if quick:
            skipped += [
                f"{route.id}: not measured, nor its {len(route.targets)} target(s): --quick "
                "loads an experiment's first route only"
                for route in routes[1:]
            ]
            routes = routes[:1]
        loaded += routes
    loaded, missing = without_missing_servers(loaded)
    skipped += missing
    if not postgres_url:
        loaded, missing = without_postgresql(loaded)
        skipped += missing
    for line in skipped:
        click.echo(f"bench: {line}", err=True)
    if quick:
        loaded = [experiment.shortened(**QUICK) for experiment in loaded]
    options = RunOptions(
        tool=tool, out=out, port=port, postgres_url=postgres_url, quick=quick, skipped=skipped
    )
    interruption = _Interruption()
    # SIGINT is left alone where it is ignored (a job started in the background with `&`).
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    previous_handlers = {signum: signal.signal(signum, interruption) for signum in signals}
    try:
        return _run(loaded, options)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bench`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    return run_command(bench_command, argv, "bench")


def _report_what_was_measured(
    error: BaseException, out_dir: Path, machine: dict[str, Any], why: str, options: RunOptions
) -> None:
    """Write the report of the runs measured before ``error`` stopped the lab, if any."""
    measured = getattr(error, "results", None)
    if measured is None or not any(
        r.summary(c.id) for r in measured for c in r.experiment.configurations
    ):
        return
    paths = write_report(
        out_dir, measured, machine | {"incomplete": why}, options.skipped, options.quick
    )
    click.echo(f"bench: what was measured before that is in {paths['markdown']}", err=True)


def _run(experiments: Sequence[Experiment], options: RunOptions) -> int:
    out_dir = options.out or PROJECT_ROOT / "var" / "bench" / datetime.now().strftime(
        "%Y%m%d-%H%M%S"
    )
    try:
        tool = find_tool(options.tool)
    except LoadError as error:
        click.echo(f"bench: {error}", err=True)
        return 1
    try:  # the run's work/ too: an existing directory may be read-only
        (out_dir / "work").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        click.echo(f"bench: --out {out_dir}: cannot write there ({error.strerror})", err=True)
        return 2
    machine: dict[str, Any] = {}  # what an interruption before it is known reports
    try:
        machine = machine_description(tool, options.quick)
        with LabStacks(
            experiments, out_dir / "work", port=options.port, postgres_url=options.postgres_url
        ) as stacks:
            machine.update(stacks.versions())
            results = run_lab(experiments, LabOptions(out_dir=out_dir, tool=tool), stacks.start)
    except (LabError, LoadError) as error:
        click.echo(f"bench: {error}", err=True)
        _report_what_was_measured(error, out_dir, machine, str(error), options)
        return 1
    except KeyboardInterrupt as interruption:
        click.echo("bench: interrupted; every server it started is stopped", err=True)
        _report_what_was_measured(interruption, out_dir, machine, "interrupted", options)
        return 130
    paths = write_report(out_dir, results, machine, options.skipped, options.quick)
    click.echo(
        f"bench: report {paths['markdown']}\n       runs   {paths['json']}\n       chart  "
        f"{paths['chart'] or 'skipped (matplotlib is not installed)'}"
    )
    if options.quick and any(result.outcomes() for result in results):
        click.echo("  --quick: one 1-second run each, a smoke test; these verdicts decide nothing")
    for result in results:
        for outcome in result.outcomes():
            verdict = "MET   " if outcome.met else "MISSED"
            click.echo(
                f"  {verdict} {result.experiment.id}: {outcome.target.label}: {outcome.verdict}"
            )
    return 0
