"""Seeding is deterministic and idempotent; settings are validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_app, run_flask
from webapp.db import get_database, queries
from webapp.db.seed import generate_episode, seed
from webapp.settings import SettingsError, load_settings


def test_generated_episodes_are_deterministic_and_realistic():
    first, again = generate_episode(42), generate_episode(42)
    assert first == again
    assert (
        generate_episode(43)["title"] != first["title"]
        or generate_episode(43)["guid"] != first["guid"]
    )
    assert first["show_notes"].count("<p>") >= 2 and '<a href="https://' in first["show_notes"]
    assert 25 * 60 <= first["duration_seconds"] <= 75 * 60
    assert first["audio_bytes"] >= first["duration_seconds"] * 16_000
    assert (
        first["published_at"].isoformat() == "2015-10-19T14:00:00+00:00"
    )  # weekly from 2015-01-05
    # Chapters from episode 10 on: a welcome at 0, picks last, in order, inside the episode.
    assert generate_episode(9)["chapters"] == []
    starts = [start for start, _ in first["chapters"]]
    assert 4 <= len(starts) <= 6 and starts == sorted(set(starts))
    assert starts[0] == 0 and starts[-1] < first["duration_seconds"]
    assert first["chapters"][-1][1] == "Picks of the week"


def test_seeding_twice_changes_nothing(app):
    database = get_database(app)
    with database.session() as session:
        before = queries.site_state(session)
        assert seed(session, 30) == 0
        after = queries.site_state(session)
    assert after == before


def test_seeding_leaves_the_search_index_merged(tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/merged.sqlite3", tmp_path)
    database = get_database(app)

    def index_pages() -> tuple:
        with database.session() as session:
            row = session.fetch_one(
                "SELECT count(*) AS n, sum(length(block)) AS size FROM episodes_fts_data"
            )
        return row["n"], row["size"]

    with database.session() as session:
        seed(session, 300)
    seeded = index_pages()
    with database.session() as session:
        queries.merge_search_index(session)  # merging a merged index changes nothing
    assert index_pages() == seeded
    database.close()


def test_seeding_more_adds_only_the_missing(app):
    with get_database(app).session() as session:
        assert seed(session, 35) == 5
        assert queries.site_state(session).episode_count == 35


def test_cli_init_db_and_seed(empty_app):
    runner = empty_app.test_cli_runner()
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["seed", "--episodes", "12"])
    assert result.exit_code == 0 and "12 episodes added" in result.output
    result = runner.invoke(args=["seed", "--episodes", "12"])
    assert "0 episodes added (12 were already there)" in result.output
    assert runner.invoke(args=["seed", "--episodes", "-3"]).exit_code != 0


def test_cli_reports_an_unreachable_database_without_the_password(tmp_path):
    from webapp import create_app

    app = create_app(
        {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db", "VAR_DIR": str(tmp_path)}
    )
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 1
    assert "cannot connect" in result.output and "hunter2" not in result.output


def test_settings_come_from_the_environment_and_overrides():
    settings = load_settings(
        {"SITE_URL": "https://example.org/"},
        environ={"PROFILER_SAMPLE_RATE": "0.25", "VAR_DIR": "/srv/v"},
    )
    assert settings["SITE_URL"] == "https://example.org"
    assert settings["PROFILER_SAMPLE_RATE"] == 0.25
    assert settings["DATABASE_URL"] == "sqlite:////srv/v/podcast.sqlite3"
    assert settings["FREEZE_DIR"] == "/srv/v/build"


@pytest.mark.parametrize(
    "name, value",
    [
        ("PROFILER_SAMPLE_RATE", "2"),
        ("PROFILER_SAMPLE_RATE", "lots"),
        ("SITE_URL", "example.org"),
        ("DATABASE_POOL_SIZE", "0"),
        ("GC_FREEZE", "maybe"),
    ],
)
def test_malformed_settings_stop_start_up_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={name: value})


#: Stands for a password in the URLs below: no message may show it.
PASSWORD = "hunter2"


@pytest.mark.parametrize(
    "name, value",
    [
        ("DATABASE_URL", "sqlite:///"),
        ("DATABASE_URL", f"mysql://u:{PASSWORD}@h/db"),
        ("DATABASE_URL", f"postgresql://u:{PASSWORD}@[::1/db"),
        # Gone when the command ends, and one database per thread of a server.
        ("DATABASE_URL", "sqlite:///:memory:"),
        ("PROFILER_ENGINE", "bogus"),
        ("PROFILER_STORE", f"postgresql://u:{PASSWORD}@[::1/db"),
        # The feed's and pages' absolute links are made from it.
        ("SITE_URL", "http://"),
        ("SITE_URL", "http:// exa mple.org"),
        ("SITE_URL", "http://exa\nmple.org"),
        ("SITE_URL", "http://example.org:99999"),
        ("SITE_URL", "http://[::1"),
        ("SITE_URL", "https://example.org/?a=1#top"),
        ("SITE_URL", "https://user@example.org"),
        # Empty, they would be "/" (VAR_DIR: the database at /podcast.sqlite3) or the current
        # directory.
        ("VAR_DIR", ""),
        ("FREEZE_DIR", " "),
        ("PROFILER_DIR", ""),
    ],
)
def test_a_command_with_a_malformed_setting_says_which_in_one_line(tmp_path, name, value):
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/podcast.sqlite3",
        "PROFILER_SECRET": "s" * 40,  # else the PROFILER_ settings are not used
        name: value,
    }
    result = run_flask("seed", "--episodes", "1", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"Error: {name}") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert PASSWORD not in result.stdout + result.stderr
    assert {path.name for path in Path(tmp_path).iterdir()} <= {"var"}  # no database made


def test_directories_in_settings_are_made_absolute():
    settings = load_settings(environ={"VAR_DIR": "var"})
    assert settings["VAR_DIR"] == os.path.abspath("var")
    assert settings["DATABASE_URL"] == f"sqlite:///{os.path.abspath('var')}/podcast.sqlite3"
    assert settings["FREEZE_DIR"] == os.path.abspath("var/build")


def test_every_python_package_in_the_tree_is_packaged():
    """A package left out of pyproject works from the checkout and breaks once installed."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for project, package in ((root, "webapp"), (root / "profiling", "request_profiler")):
        pyproject = tomllib.loads((project / "pyproject.toml").read_text())
        declared = set(pyproject["tool"]["setuptools"]["packages"])
        found = {
            ".".join(init.parent.relative_to(project).parts)
            for init in (project / package).rglob("__init__.py")
        }
        assert found <= declared, project
        # The rest are data directories (templates/, static/), listed so that setuptools does
        # not warn it would ignore them: each exists and holds no Python.
        for data in declared - found:
            directory = project.joinpath(*data.split("."))
            assert directory.is_dir() and not list(directory.rglob("*.py")), data
    assert not (root / "profiling" / "__init__.py").exists()
