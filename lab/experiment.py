"""Experiment files: a baseline, single changes against it, combinations, targets.

    experiment = load_experiment("lab/experiments/uwsgi-processes.toml")
    for configuration in experiment.configurations:
        configuration.id, configuration.settings["uwsgi.processes"]

The format (TOML; knob names are listed in :mod:`lab.knobs`)::

    title = "uWSGI worker processes"
    about = "Why this experiment, and what to look at."
    runs = 3                              # measured runs per configuration

    [baseline]                            # knobs not set here keep their defaults
    label = "1 process"
    request.path = "/api/episodes"
    uwsgi.processes = 1

    [changes.cpus]                        # each change is applied alone to the baseline
    label = "processes = CPU count"
    uwsgi.processes = "cpus"

    [combined.tuned]                      # optional: several changes together
    label = "all of the above"
    changes = ["cpus", "logging_off"]

    [[targets]]                           # checked in the report, never loosened
    label = "processes = CPUs ahead of 1"
    require = "cpus / baseline >= 1"      # ratio of requests/s (median of the rounds')

    [[targets]]
    require = "cpu(cpus) / cpu(baseline) <= 1.1"   # ratio of the app's CPU per request

Optional, at the top level::

    routes = ["/health", "/search?q=python"]   # every configuration on each: one experiment
                                               # per route (request.path is set by it)
    quick = false                              # left out of `scripts/bench --quick`
    # quick = ["search"]                       # ... or only the baseline and these in it
    memory = true                              # the report shows the workers' memory

    [sweep]                                    # every combination becomes a change
    uwsgi.processes = [1, 2]                   # id "processes_1_threads_2", label
    uwsgi.threads = [1, 2]                     # "processes 1, threads 2"

    [[targets]]
    require = "baseline within best"           # the fastest configuration's per-round
                                               # ratios to it reach 1 (see results.py)

Anything malformed raises :class:`ExperimentError` with the file and the key.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import knobs

DEFAULT_RUNS = 3
_ID = re.compile(r"[a-z][a-z0-9_]{0,39}")
_REQUIRE = re.compile(
    r"\s*([a-z][a-z0-9_]*)\s*/\s*([a-z][a-z0-9_]*)\s*(>=|<=)\s*(\d+(?:\.\d+)?)\s*"
)
_CPU_REQUIRE = re.compile(
    r"\s*cpu\(\s*([a-z][a-z0-9_]*)\s*\)\s*/\s*cpu\(\s*([a-z][a-z0-9_]*)\s*\)"
    r"\s*(>=|<=)\s*(\d+(?:\.\d+)?)\s*"
)
_WITHIN_BEST = re.compile(r"\s*([a-z][a-z0-9_]*)\s+within\s+best\s*")
#: The target's name for the fastest configuration: no configuration may take it.
BEST = "best"
_TOP_LEVEL = {
    "title",
    "about",
    "runs",
    "baseline",
    "changes",
    "combined",
    "targets",
    "routes",
    "sweep",
    "quick",
    "memory",
}


class ExperimentError(ValueError):
    """An experiment file that cannot be run as written."""


@dataclass(frozen=True)
class Configuration:
    """One stack-and-request setup to measure."""

    id: str
    label: str
    #: "baseline", "change" or "combined".
    kind: str
    #: The knobs this configuration sets on top of the baseline (for the baseline: on the defaults).
    changes: Mapping[str, Any]
    #: Every knob's value.
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Target:
    """``numerator / denominator`` (ratio of median requests/s) ``>=`` or ``<=`` ``bound``;
    with ``measure`` "cpu", the ratio of the app's CPU per request instead; or, with
    ``operator`` "within" and ``denominator`` :data:`BEST`, ``numerator`` is within the
    fastest configuration's per-round range."""

    label: str
    numerator: str
    denominator: str
    operator: str
    bound: float
    #: "rps": requests/s; "cpu": the app's CPU per request (lab.app_cpu).
    measure: str = "rps"

    @property
    def expression(self) -> str:
        if self.operator == "within":
            return f"{self.numerator} within {BEST}"
        if self.measure == "cpu":
            return f"cpu({self.numerator}) / cpu({self.denominator}) {self.operator} {self.bound:g}"
        return f"{self.numerator} / {self.denominator} {self.operator} {self.bound:g}"

    def met_by(self, ratio: float) -> bool:
        return ratio >= self.bound if self.operator == ">=" else ratio <= self.bound


@dataclass(frozen=True)
class Experiment:
    id: str
    path: Path
    title: str
    about: str
    runs: int
    configurations: tuple[Configuration, ...]
    targets: tuple[Target, ...]
    #: Run every configuration on each of these paths (see :meth:`per_route`).
    routes: tuple[str, ...] = ()
    #: False: left out of ``scripts/bench --quick``.
    quick: bool = True
    #: In ``--quick``, only the baseline and these (empty: every configuration).
    quick_only: tuple[str, ...] = ()
    #: The report shows the workers' memory.
    memory: bool = False

    @property
    def baseline(self) -> Configuration:
        return self.configurations[0]

    def configuration(self, id: str) -> Configuration:
        return next(
            configuration for configuration in self.configurations if configuration.id == id
        )

    def without(self, ids: Collection[str]) -> Experiment:
        """The experiment less the configurations ``ids`` and the targets that compare them."""
        if self.baseline.id in ids:
            raise ValueError("the baseline cannot be left out: skip the experiment instead")
        return replace(
            self,
            configurations=tuple(c for c in self.configurations if c.id not in ids),
            targets=tuple(t for t in self.targets if not {t.numerator, t.denominator} & set(ids)),
        )

    def per_route(self) -> list[Experiment]:
        """One experiment per route, each configuration loading it; itself without routes."""
        if not self.routes:
            return [self]
        return [
            replace(
                self,
                id=f"{self.id} {route}",
                title=f"{self.title}: {route}",
                routes=(),
                configurations=tuple(
                    replace(c, settings={**c.settings, "request.path": route})
                    for c in self.configurations
                ),
            )
            for route in self.routes
        ]

    def for_quick(self) -> Experiment:
        """The experiment as ``--quick`` runs it: less what ``quick`` leaves out."""
        if not self.quick_only:
            return self
        return self.without([c.id for c in self.configurations[1:] if c.id not in self.quick_only])

    def shortened(self, runs: int, duration: int, warmup: int) -> Experiment:
        """The same experiment with at most ``runs`` runs, each at most ``duration`` seconds
        after at most ``warmup`` seconds of warm-up."""

        def shorten(configuration: Configuration) -> Configuration:
            settings = dict(configuration.settings)
            settings["load.duration"] = min(settings["load.duration"], duration)
            settings["load.warmup"] = min(settings["load.warmup"], warmup)
            # A change that sets them is shown (in the report) as it ran, not as its file says.
            changes = {
                name: settings[name] if name in ("load.duration", "load.warmup") else value
                for name, value in configuration.changes.items()
            }
            return replace(configuration, changes=changes, settings=settings)

        return replace(
            self,
            runs=min(self.runs, runs),
            configurations=tuple(shorten(c) for c in self.configurations),
        )


def load_experiment(path: str | Path) -> Experiment:
    """Read and check one experiment file."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ExperimentError(f"{path}: cannot read it: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ExperimentError(f"{path}: not valid TOML: {error}") from None
    try:
        return parse_experiment(document, path)
    except ExperimentError as error:
        raise ExperimentError(f"{path}: {error}") from None


def parse_experiment(document: Mapping[str, Any], path: Path) -> Experiment:
    """Check a parsed experiment file; ``path`` names it (its stem is the experiment's id)."""
    unknown = set(document) - _TOP_LEVEL
    if unknown:
        raise ExperimentError(
            f"unknown top-level key(s): {', '.join(sorted(unknown))} "
            f"(expected {', '.join(sorted(_TOP_LEVEL))})"
        )
    title = _string(document, "title", "title", required=True)
    about = _string(document, "about", "about")
    runs = document.get("runs", DEFAULT_RUNS)
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= 50:
        raise ExperimentError("runs must be a whole number from 1 to 50")

    routes = _routes(document)
    quick_only: tuple[str, ...] = ()
    if isinstance(document.get("quick"), list):
        quick, quick_only = True, _quick_only(document["quick"])
    else:
        quick = _bool(document, "quick", True)
    memory = _bool(document, "memory", False)
    baseline_table = _table(document, "baseline", "[baseline]", required=True)
    baseline_changes = _knob_values(baseline_table, "[baseline]", extra={"label"})
    if routes and "request.path" in baseline_changes:
        raise ExperimentError("[baseline] sets request.path, but routes sets it for every run")
    baseline = Configuration(
        "baseline",
        _string(baseline_table, "label", "[baseline] label") or "baseline",
        "baseline",
        baseline_changes,
        _resolve(baseline_changes, knobs.DEFAULTS, "[baseline]"),
    )
    configurations = [baseline]

    changes: dict[str, Mapping[str, Any]] = {}
    for id, table in _table(document, "changes", "[changes]").items():
        where = f"[changes.{id}]"
        _check_id(id, where)
        if not isinstance(table, dict):
            raise ExperimentError(f"{where} must be a table of knobs")
        values = _knob_values(table, where, extra={"label"})
        if not values:
            raise ExperimentError(f"{where} changes no knob")
        changes[id] = values
        configurations.append(
            Configuration(
                id,
                _string(table, "label", f"{where} label") or knobs.describe(values),
                "change",
                values,
                _resolve(values, baseline.settings, where),
            )
        )

    for id, label, values in _sweep(_table(document, "sweep", "[sweep]")):
        if id in changes:
            raise ExperimentError(f"[sweep]: the change {id} is already defined")
        changes[id] = values
        configurations.append(
            Configuration(
                id, label, "change", values, _resolve(values, baseline.settings, f"[sweep] {id}")
            )
        )

    for id, table in _table(document, "combined", "[combined]").items():
        where = f"[combined.{id}]"
        _check_id(id, where)
        if id in changes:
            raise ExperimentError(f"{where}: the id is already a change's")
        if not isinstance(table, dict) or set(table) - {"label", "changes"}:
            raise ExperimentError(f"{where} takes only label and changes (a list of change ids)")
        names = table.get("changes")
        if (
            not isinstance(names, list)
            or len(names) < 2
            or not all(isinstance(n, str) for n in names)
        ):
            raise ExperimentError(f"{where} changes must list at least two change ids")
        values = _combine(names, changes, where)
        configurations.append(
            Configuration(
                id,
                _string(table, "label", f"{where} label") or " + ".join(names),
                "combined",
                values,
                _resolve(values, baseline.settings, where),
            )
        )

    if routes:
        for configuration in configurations[1:]:
            if "request.path" in configuration.changes:
                raise ExperimentError(
                    f"{configuration.id} sets request.path, but routes sets it for every run"
                )
    ids = {configuration.id for configuration in configurations}
    unknown_quick = [id for id in quick_only if id not in ids]
    if unknown_quick:
        raise ExperimentError(
            f'quick names no configuration "{unknown_quick[0]}" (known: {", ".join(sorted(ids))})'
        )
    targets = tuple(_target(entry, index, ids) for index, entry in enumerate(_targets(document), 1))
    return Experiment(
        path.stem,
        path,
        title,
        about,
        runs,
        tuple(configurations),
        targets,
        routes=routes,
        quick=quick,
        quick_only=quick_only,
        memory=memory,
    )


def _quick_only(ids: list[Any]) -> tuple[str, ...]:
    if not ids or not all(isinstance(id, str) for id in ids) or "baseline" in ids:
        raise ExperimentError(
            "quick must be true, false or a non-empty list of change ids (the baseline always runs)"
        )
    return tuple(ids)


def _bool(document: Mapping[str, Any], key: str, default: bool) -> bool:
    value = document.get(key, default)
    if not isinstance(value, bool):
        raise ExperimentError(f"{key} must be true or false")
    return value


def _routes(document: Mapping[str, Any]) -> tuple[str, ...]:
    routes = document.get("routes", [])
    if not isinstance(routes, list) or "routes" in document and not routes:
        raise ExperimentError("routes must be a non-empty list of URL paths")
    try:
        checked = tuple(knobs.check("request.path", route) for route in routes)
    except knobs.KnobError as error:
        raise ExperimentError(f"routes: {error}") from None
    if len(set(checked)) != len(checked):
        raise ExperimentError("routes lists a path twice")
    return checked


def _sweep(table: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, label, knob values)`` for every combination of the ``[sweep]`` table's lists."""
    values = _knob_values(table, "[sweep]", extra=set())
    if not values:
        return []
    for knob, choices in values.items():
        if not isinstance(choices, list) or not choices:
            raise ExperimentError(f"[sweep] {knob} must be a non-empty list of values")
    combinations = []
    for combination in itertools.product(*values.values()):
        chosen = dict(zip(values, combination, strict=True))
        words = [(knob.rpartition(".")[2], knobs.describe({knob: v})) for knob, v in chosen.items()]
        shown = [(name, text.partition("=")[2]) for name, text in words]
        id = "_".join(
            f"{name}_{re.sub(r'[^a-z0-9]+', 'x', value.lower())}" for name, value in shown
        )
        label = ", ".join(f"{name} {value}" for name, value in shown)
        _check_id(id, f"[sweep] {label}")
        combinations.append((id, label, chosen))
    return combinations


def _string(table: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ExperimentError(f"{where} must be {'a non-empty' if required else 'a'} string")
    return value.strip()


def _table(
    document: Mapping[str, Any], key: str, where: str, required: bool = False
) -> dict[str, Any]:
    if key not in document and not required:
        return {}
    value = document.get(key)
    if not isinstance(value, dict):
        raise ExperimentError(f"{where} is {'missing' if value is None else 'not a table'}")
    return value


def _check_id(id: str, where: str) -> None:
    if id == "baseline" or not _ID.fullmatch(id):
        raise ExperimentError(f'{where}: ids are lower-case letters, digits and _ (not "baseline")')


def _knob_values(table: Mapping[str, Any], where: str, extra: set[str]) -> dict[str, Any]:
    """``{"uwsgi": {"processes": 1}}`` (TOML's dotted keys) as ``{"uwsgi.processes": 1}``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", {key: value for key, value in table.items() if key not in extra})
    return flat


def _resolve(values: Mapping[str, Any], base: Mapping[str, Any], where: str) -> dict[str, Any]:
    try:
        settings = knobs.resolve(values, base)
    except knobs.KnobError as error:
        raise ExperimentError(f"{where}: {error}") from None
    unused, why = knobs.unused_changes(values, settings)
    if unused:
        # A change that cannot change anything would read as "no effect" in the report.
        raise ExperimentError(f"{where}: {', '.join(unused)} cannot change anything: {why}")
    problem = knobs.conflict(settings)
    if problem:
        raise ExperimentError(f"{where}: {problem}")
    return settings


def _combine(
    names: list[str], changes: Mapping[str, Mapping[str, Any]], where: str
) -> dict[str, Any]:
    combined: dict[str, Any] = {}
    for name in names:
        if name not in changes:
            raise ExperimentError(
                f'{where}: there is no change "{name}" (known: {", ".join(changes) or "none"})'
            )
        for knob, value in changes[name].items():
            if knob in combined and combined[knob] != value:
                raise ExperimentError(f"{where}: the changes set {knob} to different values")
            combined[knob] = value
    return combined


def _targets(document: Mapping[str, Any]) -> list[Any]:
    targets = document.get("targets", [])
    if not isinstance(targets, list):
        raise ExperimentError("targets must be an array of tables ([[targets]])")
    return targets


def _target(entry: Any, index: int, ids: set[str]) -> Target:
    where = f"[[targets]] #{index}"
    if not isinstance(entry, dict) or set(entry) - {"label", "require"}:
        raise ExperimentError(f"{where} takes only label and require")
    if BEST in ids:
        raise ExperimentError(f'"{BEST}" names the fastest configuration: give yours another id')
    require = entry.get("require")
    text = require if isinstance(require, str) else ""
    measure = "rps"
    if within := _WITHIN_BEST.fullmatch(text):
        numerator, denominator, operator, bound = within.group(1), BEST, "within", "1"
    elif match := _REQUIRE.fullmatch(text):
        numerator, denominator, operator, bound = match.groups()
    elif match := _CPU_REQUIRE.fullmatch(text):
        numerator, denominator, operator, bound = match.groups()
        measure = "cpu"
    else:
        raise ExperimentError(
            f'{where}: require must read "<id> / <id> >= <number>" (or <=), '
            f'"cpu(<id>) / cpu(<id>) <= <number>" (or >=) or "<id> within best", '
            f"got {require!r}"
        )
    for id in (numerator, denominator):
        if id == BEST:
            continue
        if id not in ids:
            raise ExperimentError(
                f'{where}: no configuration "{id}" (known: {", ".join(sorted(ids))})'
            )
    label = _string(entry, "label", f"{where} label") or str(require).strip()
    return Target(label, numerator, denominator, operator, float(bound), measure)
