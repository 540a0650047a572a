"""Episode revisions: the database's triggers record which change of the site each episode last had.

A static build re-renders an episode only when its revision moved, so every
change an episode's pages show must move exactly that episode's revision (and
no other's), to a value it never had before: a random token, so that not even
a restored backup or a rewound counter brings an old one back. Each test makes a
real change with real SQL on both backends and reads the revisions back;
the last tests open an SQLite file from before the table existed, and one
already up to date, through a new app.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import SMALL_SEED, make_app
from webapp import create_app
from webapp.db import get_database, queries
from webapp.db.backends import DatabaseUnavailable, Session, open_database
from webapp.db.seed import generate_episode, seed
from webapp.models import EpisodeRevision, sqlite_timestamp
from webapp.settings import SETTINGS


def execute(app: Flask, statement: str, params: tuple = ()) -> int:
    with get_database(app).session() as session:
        return session.execute(statement, params)


def fetch_all(app: Flask, statement: str, params: tuple = ()) -> list[dict[str, Any]]:
    with get_database(app).session() as session:
        return session.fetch_all(statement, params)


def revisions(app: Flask) -> dict[int, int]:
    """Episode number -> revision, straight from the table."""
    rows = fetch_all(
        app,
        "SELECT e.number, r.revision"
        " FROM episodes e JOIN episode_revisions r ON r.episode_id = e.id",
    )
    return {row["number"]: row["revision"] for row in rows}


def version(app: Flask) -> int:
    return fetch_all(app, "SELECT version FROM site_state WHERE id = 1")[0]["version"]


def episode_id(app: Flask, number: int) -> int:
    return fetch_all(app, "SELECT id FROM episodes WHERE number = %s", (number,))[0]["id"]


def revision_rows(app: Flask) -> int:
    return fetch_all(app, "SELECT COUNT(*) AS n FROM episode_revisions")[0]["n"]


def episodes_without_revision(app: Flask) -> list[int]:
    rows = fetch_all(
        app,
        "SELECT e.number FROM episodes e LEFT JOIN episode_revisions r ON r.episode_id = e.id"
        " WHERE r.episode_id IS NULL",
    )
    return [row["number"] for row in rows]


def moved(before: dict[int, int], after: dict[int, int]) -> set[int]:
    """The episodes whose revision differs (or that appeared)."""
    return {number for number, revision in after.items() if before.get(number) != revision}


def fresh(after: dict[int, int], numbers: set[int], *earlier: dict[int, int]) -> bool:
    """True if the revisions of ``numbers`` appear in none of the ``earlier`` snapshots."""
    seen = {revision for snapshot in earlier for revision in snapshot.values()}
    return all(after[number] not in seen for number in numbers)


def guest_not_on(app: Flask, number: int) -> int:
    """The id of some guest who is not on episode ``number``."""
    rows = fetch_all(
        app,
        "SELECT id FROM guests WHERE id NOT IN"
        " (SELECT guest_id FROM episode_guests WHERE episode_id = %s) ORDER BY id LIMIT 1",
        (episode_id(app, number),),
    )
    return rows[0]["id"]


def reopen(app: Flask) -> Flask:
    """A new app on the same database, as a restarted uWSGI worker opens it: no init_schema."""
    return create_app({name: app.config[name] for name in SETTINGS} | {"TESTING": True})


# -- seeding and listing ------------------------------------------------------


def test_every_seeded_episode_has_one_revision_row(app):
    assert episodes_without_revision(app) == []
    assert revision_rows(app) == SMALL_SEED
    assert len(set(revisions(app).values())) == SMALL_SEED  # 63 random bits each


def test_episode_revisions_lists_every_episode_newest_number_first(app):
    expected = [
        EpisodeRevision(row["number"], row["slug"], row["revision"])
        for row in fetch_all(
            app,
            "SELECT e.number, e.slug, r.revision FROM episodes e"
            " JOIN episode_revisions r ON r.episode_id = e.id",
        )
    ]
    with get_database(app).session() as session:
        listed = queries.episode_revisions(session)
    assert [revision.number for revision in listed] == list(range(SMALL_SEED, 0, -1))
    assert listed == sorted(expected, key=lambda revision: -revision.number)


# -- what moves a revision ----------------------------------------------------


def test_updating_an_episode_moves_its_revision_only(app):
    before = revisions(app)
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("A fresh title", 7))
    after = revisions(app)
    assert moved(before, after) == {7}
    assert fresh(after, {7}, before)


def test_every_update_of_an_episode_gets_a_new_revision(app):
    seen = {revisions(app)[12]}
    for summary in ["one", "two", "three"]:
        execute(app, "UPDATE episodes SET summary = %s WHERE number = %s", (summary, 12))
        revision = revisions(app)[12]
        assert revision not in seen
        seen.add(revision)


@pytest.mark.parametrize(
    "conflict",
    # The statement's conflict clause overrides any a trigger's INSERT has
    # (which is why the triggers upsert).
    ["", "OR REPLACE", "OR IGNORE", "OR ABORT", "OR FAIL", "OR ROLLBACK"],
)
def test_an_sqlite_update_with_any_conflict_clause_moves_the_revision(tmp_path, conflict):
    """`UPDATE OR IGNORE episodes …` is as much a change as a plain UPDATE (sqlite3, scripts)."""
    app, _ = sqlite_app(tmp_path)
    before = revisions(app)
    execute(
        app,
        f"UPDATE {conflict} episodes SET title = %s WHERE number = %s",
        ("Edited in the shell", 7),
    )
    assert (
        fetch_all(app, "SELECT title FROM episodes WHERE number = 7")[0]["title"]
        == "Edited in the shell"
    )
    assert moved(before, revisions(app)) == {7}
    get_database(app).close()


def test_renaming_a_guest_moves_exactly_their_episodes_to_new_revisions(app):
    # The lead guest of episode 1, on episode 2 as well, so the rename covers several episodes.
    guest = fetch_all(
        app,
        "SELECT guest_id FROM episode_guests WHERE episode_id = %s AND position = 0",
        (episode_id(app, 1),),
    )[0]["guest_id"]
    execute(
        app,
        "INSERT INTO episode_guests (episode_id, position, guest_id) VALUES (%s, %s, %s)",
        (episode_id(app, 2), 9, guest),
    )
    on_episodes = {
        row["number"]
        for row in fetch_all(
            app,
            "SELECT e.number FROM episode_guests eg JOIN episodes e ON e.id = eg.episode_id"
            " WHERE eg.guest_id = %s",
            (guest,),
        )
    }
    assert {1, 2} <= on_episodes
    before = revisions(app)

    execute(app, "UPDATE guests SET name = %s WHERE id = %s", ("Renamed Guest", guest))

    after = revisions(app)
    assert moved(before, after) == on_episodes
    assert fresh(after, on_episodes, before)


def test_adding_and_removing_a_guest_moves_that_episodes_revision_only(app):
    target = episode_id(app, 5)
    guest = guest_not_on(app, 5)
    before = revisions(app)

    execute(
        app,
        "INSERT INTO episode_guests (episode_id, position, guest_id) VALUES (%s, %s, %s)",
        (target, 10, guest),
    )
    added = revisions(app)
    assert moved(before, added) == {5}

    execute(
        app, "DELETE FROM episode_guests WHERE episode_id = %s AND guest_id = %s", (target, guest)
    )
    removed = revisions(app)
    assert moved(added, removed) == {5}
    assert fresh(removed, {5}, before, added)


def test_reordering_an_episodes_guests_moves_its_revision_only(app):
    before = revisions(app)
    assert (
        execute(
            app,
            "UPDATE episode_guests SET position = 20 WHERE episode_id = %s AND position = 0",
            (episode_id(app, 9),),
        )
        == 1
    )
    assert moved(before, revisions(app)) == {9}


def test_moving_a_guest_row_to_another_episode_moves_both_revisions(app):
    before = revisions(app)
    assert (
        execute(
            app,
            "UPDATE episode_guests SET episode_id = %s, position = 20"
            " WHERE episode_id = %s AND position = 0",
            (episode_id(app, 4), episode_id(app, 3)),
        )
        == 1
    )
    assert moved(before, revisions(app)) == {3, 4}


def test_editing_adding_and_removing_chapters_moves_that_episodes_revision_only(app):
    assert generate_episode(12)["chapters"] and not generate_episode(3)["chapters"]
    before, before_version = revisions(app), version(app)
    execute(
        app,
        "UPDATE episode_chapters SET chapters = %s WHERE episode_id = %s",
        ('[{"startTime": 0, "title": "A better start"}]', episode_id(app, 12)),
    )
    edited = revisions(app)
    assert moved(before, edited) == {12}
    # An episode without chapters gets some: the feed now links its chapters file.
    execute(
        app,
        "INSERT INTO episode_chapters (episode_id, chapters) VALUES (%s, %s)",
        (episode_id(app, 3), '[{"startTime": 0, "title": "Intro"}]'),
    )
    added = revisions(app)
    assert moved(edited, added) == {3}
    execute(app, "DELETE FROM episode_chapters WHERE episode_id = %s", (episode_id(app, 12),))
    removed = revisions(app)
    assert moved(added, removed) == {12}
    assert fresh(removed, {12}, before, edited, added)
    assert version(app) == before_version + 3


# -- publishing, deleting, reusing a number ------------------------------------


def test_a_published_episode_gets_a_revision_no_other_has(app):
    before = revisions(app)
    with get_database(app).session() as session:
        assert seed(session, SMALL_SEED + 1) == 1
    after = revisions(app)
    assert moved(before, after) == {SMALL_SEED + 1}
    assert fresh(after, {SMALL_SEED + 1}, before)
    assert episodes_without_revision(app) == []


def test_an_episode_inserted_without_guests_gets_a_revision(app):
    # seed() adds guests right after, which moves the revision again: a bare INSERT must set
    # it itself.
    episode = generate_episode(SMALL_SEED + 1)
    stamp = sqlite_timestamp if get_database(app).dialect == "sqlite" else (lambda value: value)
    before = revisions(app)
    execute(
        app,
        "INSERT INTO episodes (number, guid, slug, title, summary, show_notes, transcript,"
        " audio_url, audio_bytes, duration_seconds, explicit, published_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            episode["number"],
            episode["guid"],
            episode["slug"],
            episode["title"],
            episode["summary"],
            episode["show_notes"],
            episode["transcript"],
            episode["audio_url"],
            episode["audio_bytes"],
            episode["duration_seconds"],
            episode["explicit"],
            stamp(episode["published_at"]),
            stamp(episode["updated_at"]),
        ),
    )
    after = revisions(app)
    assert moved(before, after) == {SMALL_SEED + 1}
    assert fresh(after, {SMALL_SEED + 1}, before)


def test_deleting_an_episode_deletes_its_revision_row_only(app):
    before = revisions(app)
    deleted_id = episode_id(app, 7)
    execute(app, "DELETE FROM episodes WHERE number = %s", (7,))
    assert (
        fetch_all(
            app, "SELECT revision FROM episode_revisions WHERE episode_id = %s", (deleted_id,)
        )
        == []
    )
    assert revisions(app) == {
        number: revision for number, revision in before.items() if number != 7
    }
    assert revision_rows(app) == SMALL_SEED - 1


def test_a_reused_episode_number_never_gets_the_old_revision(app):
    # The highest number has SQLite's highest rowid too, so SQLite hands the
    # same id to the episode inserted next: the number and the id both repeat.
    old_id = episode_id(app, SMALL_SEED)
    before = revisions(app)
    execute(app, "DELETE FROM episodes WHERE number = %s", (SMALL_SEED,))

    with get_database(app).session() as session:
        assert seed(session, SMALL_SEED) == 1  # re-inserts the missing episode, same number

    if get_database(app).dialect == "sqlite":
        assert episode_id(app, SMALL_SEED) == old_id
    assert fresh(revisions(app), {SMALL_SEED}, before)


def test_without_the_site_state_row_writes_still_work_and_move_revisions(app):
    # queries.site_state copes with a wiped row; the triggers must not fail on it.
    execute(app, "DELETE FROM site_state")
    before = revisions(app)
    execute(
        app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited without site_state", 7)
    )
    after = revisions(app)
    assert moved(before, after) == {7}
    assert fresh(after, {7}, before)


# -- the queries a build uses ----------------------------------------------------


def test_episodes_by_number_returns_those_that_exist_newest_number_first(app):
    with get_database(app).session() as session:
        found = queries.episodes_by_number(session, [3, 17, 999999])
        assert [episode.number for episode in found] == [17, 3]
        assert found == [
            queries.episode_by_number(session, 17),
            queries.episode_by_number(session, 3),
        ]
        assert any(episode.guests for episode in found)
        # Any iterable; a number asked twice is one episode.
        assert queries.episodes_by_number(session, iter([3, 3])) == [
            queries.episode_by_number(session, 3)
        ]
        assert queries.episodes_by_number(session, [999999]) == []


def test_episodes_by_number_of_nothing_runs_no_query(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    session = Session(open_database(f"sqlite:///{blocker}/db.sqlite3"))
    # The database cannot be opened: any query would raise.
    with pytest.raises(DatabaseUnavailable):
        queries.episodes_by_number(session, [1])
    assert queries.episodes_by_number(session, []) == []
    assert queries.episodes_by_number(session, iter(())) == []


@pytest.mark.parametrize("limit", [1, 10, SMALL_SEED + 5])
def test_latest_revisions_are_the_latest_published_episodes(app, limit):
    rows = fetch_all(
        app,
        "SELECT e.number, e.slug, r.revision FROM episodes e"
        " JOIN episode_revisions r ON r.episode_id = e.id",
    )
    with get_database(app).session() as session:
        latest = queries.latest_revisions(session, limit)
    by_date = {row["number"]: generate_episode(row["number"])["published_at"] for row in rows}
    expected = sorted(rows, key=lambda row: (by_date[row["number"]], row["number"]), reverse=True)
    assert latest == [
        EpisodeRevision(row["number"], row["slug"], row["revision"]) for row in expected[:limit]
    ]


def test_latest_revisions_follow_publication_date_not_number(app):
    # Episode 3 republished as the newest: first by date, though not by number.
    newest = generate_episode(SMALL_SEED)["published_at"]
    later = newest.replace(year=newest.year + 1)
    stamp = sqlite_timestamp(later) if get_database(app).dialect == "sqlite" else later
    execute(app, "UPDATE episodes SET published_at = %s WHERE number = %s", (stamp, 3))
    with get_database(app).session() as session:
        numbers = [revision.number for revision in queries.latest_revisions(session, 10)]
    assert numbers == [3, *range(SMALL_SEED, SMALL_SEED - 9, -1)]


# -- the schema script on an existing database ---------------------------------------


def test_running_the_schema_again_changes_no_revision(app):
    before, before_version = revisions(app), version(app)
    get_database(app).init_schema()
    assert revisions(app) == before
    assert version(app) == before_version


def test_init_schema_backfills_a_database_without_revisions(app):
    """`flask init-db` on a database from before episode_revisions, on either backend."""
    execute(app, "DROP TABLE episode_revisions")
    get_database(app).close()  # no pooled connection keeps a plan of the old table

    get_database(app).init_schema()

    assert episodes_without_revision(app) == []
    backfilled = revisions(app)
    assert len(set(backfilled.values())) == SMALL_SEED
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("After the upgrade", 8))
    assert moved(backfilled, revisions(app)) == {8}


def sqlite_app(tmp_path: Path) -> tuple[Flask, Path]:
    """A seeded app on an SQLite file, closed; and the file."""
    path = tmp_path / "podcast.sqlite3"
    app = make_app(f"sqlite:///{path}", tmp_path)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    get_database(app).close()
    return app, path


def script_version() -> int:
    script = (Path(__file__).parents[1] / "webapp" / "db" / "schema_sqlite.sql").read_text()
    return int(re.search(r"PRAGMA user_version = (\d+);", script).group(1))  # type: ignore[union-attr]


def sqlite_rows(path: Path, statement: str) -> list[tuple]:
    """``statement``'s rows, read with a connection of its own."""
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(statement).fetchall()


def trigger_sql(path: Path) -> dict[str, str]:
    return dict(sqlite_rows(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))


def make_it_a_database_from_before_revisions(path: Path) -> None:
    """What the previous release left: no episode_revisions, triggers that know
    nothing of it, user_version 0."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA foreign_keys = ON")
    for name, sql in trigger_sql(path).items():
        if "episode_revisions" in sql:
            old_sql = re.sub(r"\s*(INSERT INTO|UPDATE) episode_revisions[^;]*;", "", sql)
            assert "episode_revisions" not in old_sql
            connection.execute(f"DROP TRIGGER {name}")
            connection.execute(old_sql)
    connection.execute("DROP TABLE episode_revisions")
    connection.commit()
    connection.execute("PRAGMA user_version = 0")
    connection.close()


def test_an_sqlite_database_from_before_revisions_is_upgraded_when_an_app_opens_it(tmp_path):
    old_app, path = sqlite_app(tmp_path)
    make_it_a_database_from_before_revisions(path)
    [(at_upgrade,)] = sqlite_rows(path, "SELECT version FROM site_state")

    app = reopen(old_app)  # no init_schema: opening the file is the upgrade
    with get_database(app).session() as session:
        listed = queries.episode_revisions(session)

    assert [revision.number for revision in listed] == list(range(SMALL_SEED, 0, -1))
    assert len({revision.revision for revision in listed} - {None}) == SMALL_SEED
    assert version(app) == at_upgrade  # the upgrade is not a change of the site
    assert episodes_without_revision(app) == []
    assert sqlite_rows(path, "PRAGMA user_version") == [(script_version(),)]

    # The triggers maintain it again: an edit, a rename, a new guest.
    before = revisions(app)
    execute(
        app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited after the upgrade", 4)
    )
    assert moved(before, revisions(app)) == {4}
    before = revisions(app)
    guest = fetch_all(
        app,
        "SELECT guest_id FROM episode_guests WHERE episode_id = %s AND position = 0",
        (episode_id(app, 11),),
    )[0]["guest_id"]
    execute(app, "UPDATE guests SET name = %s WHERE id = %s", ("Renamed After Upgrade", guest))
    guest_episodes = {
        row["number"]
        for row in fetch_all(
            app,
            "SELECT e.number FROM episode_guests eg JOIN episodes e ON e.id = eg.episode_id"
            " WHERE eg.guest_id = %s",
            (guest,),
        )
    }
    assert moved(before, revisions(app)) == guest_episodes
    before = revisions(app)
    execute(
        app,
        "INSERT INTO episode_guests (episode_id, position, guest_id) VALUES (%s, %s, %s)",
        (episode_id(app, 6), 10, guest_not_on(app, 6)),
    )
    assert moved(before, revisions(app)) == {6}
    get_database(app).close()


def test_an_up_to_date_sqlite_database_is_not_written_when_an_app_opens_it(tmp_path):
    old_app, path = sqlite_app(tmp_path)
    # A trigger altered by hand: the schema script, if it ran, would put it back.
    altered = "CREATE TRIGGER guests_updated AFTER UPDATE ON guests BEGIN SELECT 1; END"
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER guests_updated")
    connection.execute(altered)
    connection.commit()
    connection.close()

    # An observer connection: data_version moves when any other connection commits.
    observer = sqlite3.connect(path)
    data_version, schema_version, user_version = (
        observer.execute(f"PRAGMA {pragma}").fetchone()[0]
        for pragma in ("data_version", "schema_version", "user_version")
    )
    assert user_version == script_version()

    app = reopen(old_app)
    with get_database(app).session() as session:
        assert len(queries.episode_revisions(session)) == SMALL_SEED
        assert len(queries.latest_revisions(session, 10)) == 10

    assert observer.execute("PRAGMA data_version").fetchone()[0] == data_version
    assert observer.execute("PRAGMA schema_version").fetchone()[0] == schema_version
    assert trigger_sql(path)["guests_updated"] == altered

    # The probe does see a write: `flask init-db` runs the script regardless.
    get_database(app).init_schema()
    assert observer.execute("PRAGMA data_version").fetchone()[0] != data_version
    assert trigger_sql(path)["guests_updated"] != altered
    observer.close()
    get_database(app).close()
