"""The tuning lab: measure the real stack, one change at a time, against a baseline.

    scripts/bench                                   # every experiment in lab/experiments/
    scripts/bench lab/experiments/uwsgi.toml     # one experiment
    scripts/bench --quick                           # a one-minute smoke run (CI)

Modules: :mod:`~lab.knobs` (what can be changed), :mod:`~lab.experiment`
(the TOML files), :mod:`~lab.loadgen` (wrk/ab), :mod:`~lab.stats` and
:mod:`~lab.results` (medians, ratios, targets), :mod:`~lab.report`
(Markdown, JSON, chart), :mod:`~lab.compare` (``scripts/bench-compare``).
"""
