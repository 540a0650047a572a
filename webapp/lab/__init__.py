"""The tuning lab: measure the real stack, one change at a time, against a baseline.

    scripts/bench                                   # every experiment in deploy/experiments/
    scripts/bench deploy/experiments/uwsgi.toml     # one experiment
    scripts/bench --quick                           # a one-minute smoke run (CI)

Modules: :mod:`~webapp.lab.knobs` (what can be changed), :mod:`~webapp.lab.experiment`
(the TOML files), :mod:`~webapp.lab.loadgen` (wrk/ab), :mod:`~webapp.lab.stats` and
:mod:`~webapp.lab.results` (medians, ratios, targets), :mod:`~webapp.lab.report`
(Markdown, JSON, chart), :mod:`~webapp.lab.compare` (``scripts/bench-compare``).
"""
