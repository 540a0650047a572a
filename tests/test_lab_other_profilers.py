"""The profilers the lab compares request_profiler with, and how a configuration selects one."""

from __future__ import annotations

from lab import knobs, servers
from lab.other_profilers import install_pyinstrument_recipe, install_werkzeug_profiler


def test_pyinstrument_recipe_answers_its_page_for_profile_requests_only(app) -> None:
    install_pyinstrument_recipe(app)
    client = app.test_client()

    assert client.get("/health").status_code == 200
    assert b"pyinstrumentHTMLRenderer" not in client.get("/health").data
    assert b"pyinstrumentHTMLRenderer" in client.get("/health?profile").data


def test_werkzeug_profiler_writes_one_stats_file_per_request(app, tmp_path) -> None:
    install_werkzeug_profiler(app, tmp_path / "werkzeug")
    client = app.test_client()

    assert [client.get("/health").status_code for _ in range(3)] == [200] * 3
    assert len(list((tmp_path / "werkzeug").glob("*.prof"))) == 3


def test_the_other_profilers_run_from_lab_wsgi_with_request_profiler_off(tmp_path) -> None:
    stacks = servers.LabStacks([], tmp_path)
    stacks.database_urls["sqlite"] = "sqlite:///unused"
    settings = knobs.resolve({"app.profiler": "werkzeug"})

    stack_settings = stacks.stack_settings(settings, 8000, 8001)

    assert stack_settings.uwsgi_options["module"] == servers.LAB_WSGI_MODULE
    assert stack_settings.environment["LAB_PROFILER"] == "werkzeug"
    assert "PROFILER_SECRET" not in stack_settings.environment
