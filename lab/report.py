"""The lab's output: ``report.md``, ``runs.json`` and ``ratios.png`` in one directory.

    paths = write_report(out_dir, results, machine)
    paths["markdown"], paths["json"], paths["chart"]   # the chart's is None without matplotlib

The chart needs matplotlib (the ``lab`` extra); without it the report says
so and everything else is written.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import knobs
from .experiment import Configuration
from .loadgen import TAIL_RATIO
from .results import ExperimentResult

CHART_NAME = "ratios.png"
#: The cheap dynamic routes, where a p99 beyond TAIL_RATIO × p50 is a stall, not the work:
#: issue 14's target is that no run on them has one.
LIGHT_ROUTES = ("/health", "/api/episodes/10", "/api/episodes")
#: Above the targets of a --quick run, whose single short runs decide nothing.
QUICK_VERDICTS = (
    "_--quick: each verdict below comes from one 1-second run per configuration, a smoke "
    "test and not a measurement; run the experiment without --quick to check a target._"
)


def write_report(
    out_dir: Path,
    results: Sequence[ExperimentResult],
    machine: Mapping[str, Any],
    skipped: Sequence[str] = (),
    quick: bool = False,
) -> dict[str, Path | None]:
    """Write the three files into ``out_dir`` (created if needed) and return their paths.

    ``skipped`` says what was left out and why, one line each (e.g. no PostgreSQL);
    ``quick`` marks the targets' verdicts as a smoke test's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "runs.json"
    json_path.write_text(
        json.dumps(
            {
                "machine": dict(machine),
                "skipped": list(skipped),
                "experiments": [result.as_dict() for result in results],
            },
            indent=2,
        )
        + "\n"
    )
    chart_path, chart_note = write_chart(out_dir / CHART_NAME, results)
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(
        markdown(
            results, machine, chart_path.name if chart_path else None, chart_note, skipped, quick
        )
    )
    return {"markdown": markdown_path, "json": json_path, "chart": chart_path}


def markdown(
    results: Sequence[ExperimentResult],
    machine: Mapping[str, Any],
    chart: str | None,
    chart_note: str = "",
    skipped: Sequence[str] = (),
    quick: bool = False,
) -> str:
    """The whole report as Markdown: the machine, one table per experiment, the targets."""
    lines = ["# Tuning lab report", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines += [
        "",
        "Requests/s is the median of the measured runs (warm-up discarded); *range* is "
        "(max − min) / median. Every configuration is measured once per round; *× baseline* is "
        "the median of the per-round ratios to the baseline, with their lowest and highest in "
        "brackets. A target whose bound lies within that bracket is marked inconclusive. "
        "p50/p99 are medians of the runs' latency percentiles. *errors* are "
        "connect/read/write/timeout errors; *bad status* counts responses the tool rejects "
        "by status (wrk: not 2xx/3xx; ab: not 2xx). "
        "*app CPU/req* is the app server's CPU time (master and workers) over a run divided "
        "by the requests it served, median of the runs, with the median and range of its "
        "per-round ratios to the baseline's in brackets: other load on the machine moves it "
        "far less than requests/s. "
        "⚠ marks runs where the load generator used ≥90% of its CPU: there the figure is the "
        "generator's ceiling, not the server's. *p99/p50* is the median of the runs' ratios; "
        f"⚠ k/n there marks the runs whose p99 was more than {TAIL_RATIO:g}× their p50.",
        "",
    ]
    lines += tail_summary(results)
    if skipped:
        lines += ["## Not measured", "", *(f"- {line}" for line in skipped), ""]
    outcomes = [(result, outcome) for result in results for outcome in result.outcomes()]
    if outcomes:
        lines += ["## Targets", "", *([QUICK_VERDICTS, ""] if quick else [])]
        lines += [
            "| experiment | target | requires | result |",
            "|---|---|---|---|",
        ]
        for result, outcome in outcomes:
            mark = "✅" if outcome.met else "❌"
            lines.append(
                f"| {result.experiment.id} | {outcome.target.label} | "
                f"`{outcome.target.expression}` | {mark} {outcome.verdict} |"
            )
        lines.append("")
    lines += [f"![ratio to baseline]({chart})" if chart else f"_Chart skipped: {chart_note}_", ""]
    for result in results:
        lines += _experiment_section(result)
    return "\n".join(lines) + "\n"


def _experiment_section(result: ExperimentResult) -> list[str]:
    experiment = result.experiment
    lines = [
        f"## {experiment.title}",
        "",
        f"`{experiment.path}` — {experiment.runs} run(s) per configuration.",
        "",
    ]
    if experiment.about:
        lines += [experiment.about, ""]
    base = experiment.baseline.settings
    lines += [
        f"Baseline: GET {base['request.path']} via {base['request.via']}; "
        f"{knobs.describe(experiment.baseline.changes) or 'as deployed'}. Load: "
        f"{base['load.connections']} connections, {base['load.threads']} thread(s), "
        f"{base['load.duration']} s runs after {base['load.warmup']} s of warm-up. Knobs not named "
        f"keep what deploy/ configures.",
        "",
    ]
    lines += [
        "| configuration | changes | req/s | range | × baseline | app CPU/req | p50 ms | p99 ms "
        "| p99/p50 | errors | bad status | body |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for configuration in experiment.configurations:
        measured = result.configurations[configuration.id]
        summary = measured.summary
        changes = (
            "—"
            if configuration.kind == "baseline"
            else f"`{knobs.describe(configuration.changes)}`"
        )
        if summary is None:
            lines.append(f"| {configuration.label} | {changes} | not measured | | | | | | | | | |")
            continue
        warning = f" ⚠ {summary.saturated_runs}/{summary.runs}" if summary.saturated_runs else ""
        ratios = result.paired_ratios(configuration.id)
        ratio = f"{result.ratio(configuration.id):.2f}×"
        if configuration.kind != "baseline" and len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        tail = f"{summary.tail_ratio:.1f}"
        if summary.long_tail_runs:
            tail += f" ⚠ {summary.long_tail_runs}/{summary.runs}"
        lines.append(
            f"| {configuration.label} | {changes} | {summary.rps_median:,.0f}{warning} | "
            f"{summary.spread:.0%} | {ratio} | {_app_cpu(result, configuration)} | "
            f"{summary.p50_ms:.2f} | {summary.p99_ms:.2f} | "
            f"{tail} | {summary.errors} | {summary.bad_status} | {_size(measured.response_bytes)} |"
        )
    lines.append("")
    fastest = result.fastest()
    if fastest is not None and len(experiment.configurations) > 2:
        lines += [
            f"Fastest: {experiment.configuration(fastest).label} "
            f"({result.ratio(fastest):.2f}× the baseline).",
            "",
        ]
    if experiment.memory:
        lines += _memory_table(result)
    return lines


def _memory_table(result: ExperimentResult) -> list[str]:
    """Each configuration's workers: RSS, the private part of it, and the shared rest."""
    lines = [
        "Memory of each worker after each measured run (from /proc/<pid>/smaps_rollup: private "
        "= Private_Clean + Private_Dirty, pages no other process maps; the rest of the RSS is "
        "shared with the master and the other workers). Medians over workers and runs, "
        "lowest–highest in brackets.",
        "",
        "| configuration | workers | RSS MB | private MB | private / RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for configuration in result.experiment.configurations:
        runs = result.configurations[configuration.id].memory
        workers = [worker for run in runs for worker in run]
        if not workers:
            lines.append(f"| {configuration.label} | not measured | | | |")
            continue

        def spread(values: list[float], form: str) -> str:
            median = statistics.median(values)
            return f"{median:{form}} ({min(values):{form}}–{max(values):{form}})"

        megabytes = 1024 * 1024
        lines.append(
            f"| {configuration.label} | {statistics.median(len(run) for run in runs):g} | "
            f"{spread([w.rss_bytes / megabytes for w in workers], '.1f')} | "
            f"{spread([w.private_bytes / megabytes for w in workers], '.1f')} | "
            f"{spread([w.private_share for w in workers], '.0%')} |"
        )
    lines.append("")
    return lines


def _app_cpu(result: ExperimentResult, configuration: Configuration) -> str:
    """The median app CPU per request, and its per-round ratios to the baseline's."""
    median = result.configurations[configuration.id].cpu_per_request_median
    if median is None:
        return "—"
    text = f"{median * 1e6:,.0f} µs"
    ratios = result.paired_ratios(configuration.id, measure="cpu")
    if configuration.kind != "baseline" and ratios:
        text += f" ({statistics.median(ratios):.2f}×"
        text += f", {min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ")"
    return text


def tail_summary(results: Sequence[ExperimentResult]) -> list[str]:
    """How many runs had a long tail, overall and on the light routes (say which)."""
    total = flagged = light_total = light = 0
    light_flagged: list[str] = []
    for result in results:
        for configuration in result.experiment.configurations:
            runs = result.configurations[configuration.id].runs
            long = sum(run.long_tail for run in runs)
            total, flagged = total + len(runs), flagged + long
            if configuration.settings["request.path"] in LIGHT_ROUTES:
                light_total, light = light_total + len(runs), light + long
                if long:
                    light_flagged.append(
                        f"{result.experiment.id}/{configuration.id} ({long}/{len(runs)})"
                    )
    if not total:
        return []
    line = (
        f"**Tail latency**: p99 > {TAIL_RATIO:g}× p50 in {flagged} of {total} runs; on the "
        f"light routes ({', '.join(LIGHT_ROUTES)}) in {light} of {light_total}"
    )
    line += f": {', '.join(light_flagged)}." if light_flagged else "."
    return [line, ""]


def _size(count: int) -> str:
    return f"{count / 1024:,.1f} KB" if count >= 1024 else f"{count} B"


def write_chart(path: Path, results: Sequence[ExperimentResult]) -> tuple[Path | None, str]:
    """One horizontal bar chart per experiment of each configuration's ratio to its baseline."""
    try:
        import matplotlib
    except ImportError:
        return None, "matplotlib is not installed (pip install -e '.[lab]')"
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.ticker
    from matplotlib import pyplot

    charted = [
        result for result in results if any(c.summary for c in result.configurations.values())
    ]
    if not charted:
        return None, "nothing was measured"
    heights = [
        0.8 + 0.35 * sum(c.summary is not None for c in result.configurations.values())
        for result in charted
    ]
    figure, axes = pyplot.subplots(
        len(charted),
        1,
        figsize=(9, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for axis, result in zip(axes[:, 0], charted, strict=True):
        measured = [
            (c, r)
            for c in result.experiment.configurations
            if (r := result.ratio(c.id)) is not None
        ]
        configurations = [configuration for configuration, _ in measured]
        labels = [configuration.label for configuration in configurations]
        ratios = [ratio for _, ratio in measured]
        colours = [
            "#888888" if c.kind == "baseline" else "#2a7ab0" if r >= 1 else "#c0504d"
            for c, r in zip(configurations, ratios, strict=True)
        ]
        rows = range(len(configurations))
        # Bars grow from the baseline's 1.0, left for slower, right for faster.
        axis.barh(rows, [value - 1 for value in ratios], left=1.0, color=colours)
        axis.set_yticks(rows, labels, fontsize=8)
        axis.invert_yaxis()
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        axis.xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}×")
        )
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(result.experiment.title, fontsize=10, loc="left")
        for row, value in zip(rows, ratios, strict=True):
            right = value >= 1
            axis.annotate(
                f"{value:.2f}×",
                (value, row),
                xytext=(3 if right else -3, 0),
                textcoords="offset points",
                ha="left" if right else "right",
                va="center",
                fontsize=7,
            )
        # Room on both sides of 1× for the labels, whichever way the bars go.
        axis.set_xlim(min(ratios + [1.0]) / 1.6, max(ratios + [1.0]) * 1.6)
    axes[-1, 0].set_xlabel("requests/s, ratio to the experiment's baseline (log scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path, ""
