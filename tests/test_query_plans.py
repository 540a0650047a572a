"""Every query the site issues uses an index, on both backends.

The test crawls every route with the real app, records each statement and
its parameters as the data layer executes it, and EXPLAINs each one. SQLite
must not report a bare ``SCAN table``; PostgreSQL, with sequential scans
disabled as the planner's last resort, must not choose one anyway (which it
does only when no index can answer the query).
"""

from __future__ import annotations

import re

import pytest

from webapp.db import backends as database_module
from webapp.db import get_database
from webapp.db.seed import generate_episode
from webapp.freeze import freeze

#: Queries that read a whole table on purpose, with the reason.
WHOLE_TABLE_READS = {
    # The catalogue and the feed list every episode's guests: all rows are wanted.
    "SELECT eg.episode_id, g.slug, g.name"
    " FROM episode_guests eg JOIN guests g ON g.id = eg.guest_id"
    " ORDER BY eg.episode_id, eg.position",
    # A build compares every episode's revision with the last build's: every row is wanted,
    # read in the subquery through the number's index, joined into one row (the scan of t).
    "SELECT group_concat(CASE WHEN typeof(number) = 'integer' THEN number END, ',') AS numbers,"
    " group_concat(CASE WHEN typeof(revision) = 'integer' THEN revision END, ',') AS revisions,"
    " count(*) AS episodes, count(*) - count(revision) AS unrevised"
    " FROM (SELECT e.number, r.revision FROM episodes e"
    " LEFT JOIN episode_revisions r ON r.episode_id = e.id ORDER BY e.number DESC) t",
}


@pytest.fixture
def issued_queries(monkeypatch):
    """(statement, params) of every query run, as the data layer runs it."""
    issued: list[tuple[str, tuple]] = []
    real_execute = database_module.Connection._execute

    def recording(self, statement, params):
        issued.append((statement, tuple(params)))
        return real_execute(self, statement, params)

    monkeypatch.setattr(database_module.Connection, "_execute", recording)
    return issued


def crawl(client) -> None:
    slug = generate_episode(7)["slug"]
    for url in [
        "/",
        "/episodes/",
        f"/episodes/7/{slug}",
        "/episodes/7",
        "/episodes/999/x",
        "/search?q=python+flask",
        "/search?q=zzz",
        "/api/episodes",
        "/api/episodes?page=2&per_page=5",
        "/api/episodes/7",
        "/api/episodes/999",
        "/episodes/rss",
        "/episodes/12/chapters.json",
        "/episodes/7/transcript.html",
        "/health",
    ]:
        assert client.get(url).status_code < 500, url


def explain(session, statement: str, params: tuple) -> list[str]:
    if session.database.dialect == "sqlite":
        rows = session.fetch_all("EXPLAIN QUERY PLAN " + statement, params)
        return [row["detail"] for row in rows]
    session.execute("SET LOCAL enable_seqscan = off")
    rows = session.fetch_all("EXPLAIN " + statement, params)
    return [row["QUERY PLAN"] for row in rows]


def table_scans(plan: list[str]) -> list[str]:
    """Plan lines that read a table without an index."""
    return [
        line
        for line in plan
        if re.match(r"^SCAN \w+$", line.strip())  # SQLite: no USING INDEX, not a virtual table
        or "Seq Scan" in line  # PostgreSQL
    ]


def freeze_twice(app, tmp_path) -> None:
    """A full build, then an incremental one after an edit: the freezer's queries."""
    freeze(app, tmp_path / "build")
    with get_database(app).session() as session:
        session.execute("UPDATE episodes SET title = %s WHERE number = 7", ("Edited",))
    assert len(freeze(app, tmp_path / "build").rendered) == 3


def test_every_query_uses_an_index(client, app, issued_queries, tmp_path):
    crawl(client)
    freeze_twice(app, tmp_path)
    statements = {}
    for statement, params in issued_queries:
        statements.setdefault(statement, params)
    assert len(statements) >= 6  # the crawl reached the data layer's queries
    assert any("episode_revisions r" in statement for statement in statements)  # and the freezer's
    assert any("e.number IN" in statement for statement in statements)
    failures = {}
    with get_database(app).session() as session:
        for statement, params in statements.items():
            scans = table_scans(explain(session, statement, params))
            if scans and statement not in WHOLE_TABLE_READS:
                failures[statement] = scans
    assert failures == {}


def test_search_uses_the_full_text_index(client, app, issued_queries):
    client.get("/search?q=python")
    (statement, params) = next((s, p) for s, p in issued_queries if "MATCH" in s or "@@" in s)
    with get_database(app).session() as session:
        plan = "\n".join(explain(session, statement, params))
    if session.database.dialect == "sqlite":
        assert "VIRTUAL TABLE INDEX" in plan
    else:
        assert "episodes_search" in plan
