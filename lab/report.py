"""The lab's output: ``report.md``, ``runs.json`` and ``ratios.png`` in one directory.

    paths = write_report(out_dir, results, machine)
    paths["markdown"], paths["json"], paths["chart"]   # the chart's is None without matplotlib

The chart needs matplotlib (the ``lab`` extra); without it the report says
so and everything else is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import knobs
from .results import ExperimentResult

CHART_NAME = "ratios.png"


def write_report(
    out_dir: Path,
    results: Sequence[ExperimentResult],
    machine: Mapping[str, Any],
    skipped: Sequence[str] = (),
) -> dict[str, Path | None]:
    """Write the three files into ``out_dir`` (created if needed) and return their paths.

    ``skipped`` says what was left out and why, one line each (e.g. no PostgreSQL).
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
        markdown(results, machine, chart_path.name if chart_path else None, chart_note, skipped)
    )
    return {"markdown": markdown_path, "json": json_path, "chart": chart_path}


def markdown(
    results: Sequence[ExperimentResult],
    machine: Mapping[str, Any],
    chart: str | None,
    chart_note: str = "",
    skipped: Sequence[str] = (),
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
        "⚠ marks runs where the load generator used ≥90% of its CPU: there the figure is the "
        "generator's ceiling, not the server's.",
        "",
    ]
    if skipped:
        lines += ["## Not measured", "", *(f"- {line}" for line in skipped), ""]
    outcomes = [(result, outcome) for result in results for outcome in result.outcomes()]
    if outcomes:
        lines += [
            "## Targets",
            "",
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
        "| configuration | changes | req/s | range | × baseline | p50 ms | p99 ms | errors "
        "| bad status | body |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            lines.append(f"| {configuration.label} | {changes} | not measured | | | | | | | |")
            continue
        warning = f" ⚠ {summary.saturated_runs}/{summary.runs}" if summary.saturated_runs else ""
        ratios = result.paired_ratios(configuration.id)
        ratio = f"{result.ratio(configuration.id):.2f}×"
        if configuration.kind != "baseline" and len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        lines.append(
            f"| {configuration.label} | {changes} | {summary.rps_median:,.0f}{warning} | "
            f"{summary.spread:.0%} | {ratio} | {summary.p50_ms:.2f} | {summary.p99_ms:.2f} | "
            f"{summary.errors} | {summary.bad_status} | {_size(measured.response_bytes)} |"
        )
    lines.append("")
    return lines


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
