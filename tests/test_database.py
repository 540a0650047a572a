"""The data layer against real servers: outages, restarts, forks, secrets."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import SMALL_SEED, make_app
from webapp import create_app
from webapp.db import get_database
from webapp.db.backends import Database, DatabaseUnavailable, open_database, redact_url
from webapp.db.seed import seed


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "path", ["/", "/episodes/", "/episodes/rss", "/api/episodes", "/search?q=python", "/health"]
)
@pytest.mark.parametrize(
    "url_form",
    [
        "postgresql://podcast:s3cret-pw@127.0.0.1:{port}/podcast",
        "postgresql://podcast@127.0.0.1:{port}/podcast?password=s3cret-pw",
        "postgres://podcast@127.0.0.1:{port}/podcast?connect_timeout=2&pass%77ord=s3cret-pw",
    ],
    ids=["userinfo", "query", "encoded-name"],
)
def test_postgres_down_is_a_503_that_leaks_no_password(tmp_path, path, url_form, caplog):
    url = url_form.format(port=closed_port())
    app = create_app({"DATABASE_URL": url, "VAR_DIR": str(tmp_path)})
    response = app.test_client().get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert b"s3cret-pw" not in response.data
    assert "s3cret-pw" not in caplog.text
    if path.startswith(("/api", "/health")):
        assert response.is_json
    else:
        assert b"<!doctype html>" in response.data


def test_sqlite_that_cannot_be_opened_is_a_503(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app = create_app({"DATABASE_URL": f"sqlite:///{blocker}/db.sqlite3", "VAR_DIR": str(tmp_path)})
    assert app.test_client().get("/api/episodes").status_code == 503


def test_postgres_connections_are_reopened_after_the_server_drops_them(postgres_url, tmp_path):
    # A name of its own, so that only this app's connections are terminated,
    # not those of other suites running against the same server.
    name = f"webapp-{uuid.uuid4().hex[:12]}"
    app = make_app(f"{postgres_url}&application_name={name}", tmp_path)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    # What a server restart does to every pooled connection: terminate them.
    admin = psycopg2.connect(os.environ["TEST_DATABASE_URL"])
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        assert cursor.rowcount >= 1
    admin.close()
    # The next request succeeds on a fresh connection; no 503, no restart.
    assert client.get("/health").status_code == 200
    assert client.get("/api/episodes").status_code == 200
    get_database(app).close()


def test_connections_are_not_shared_across_fork(postgres_url):
    database = open_database(postgres_url)
    with database.session() as session:
        parent_backend = session.fetch_one("SELECT pg_backend_pid() AS pid")["pid"]
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            with database.session() as session:
                pid = session.fetch_one("SELECT pg_backend_pid() AS pid")["pid"]
            os.write(writer, str(pid).encode())
        finally:
            os._exit(0)
    os.close(writer)
    child_backend = int(os.read(reader, 100) or 0)
    os.waitpid(child, 0)
    assert child_backend and child_backend != parent_backend
    # The parent's pooled connection still works: the child never touched it.
    with database.session() as session:
        assert session.fetch_one("SELECT pg_backend_pid() AS pid")["pid"] == parent_backend
    database.close()


def test_answers_do_not_depend_on_the_session_time_zone(postgres_url, tmp_path):
    """The app sets no session state, so PgBouncer's transaction pooling (a different server
    session at every transaction, no startup ``options``) cannot change what it answers."""
    app = make_app(postgres_url, tmp_path / "utc")
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    # The same schema, read by a second app whose sessions run at UTC+12:45.
    chatham_url = postgres_url.replace("options=", "options=-c%20timezone%3DPacific%2FChatham%20")
    chatham = make_app(chatham_url, tmp_path / "chatham")
    with get_database(chatham).session() as session:
        assert session.fetch_one("SHOW timezone")["TimeZone"] == "Pacific/Chatham"
    paths = ["/api/episodes?per_page=3", "/api/episodes/7", "/episodes/rss", "/episodes/", "/"]
    for path in paths:
        ours, theirs = app.test_client().get(path), chatham.test_client().get(path)
        assert ours.status_code == 200, path
        assert (theirs.data, theirs.headers.get("Last-Modified")) == (
            ours.data,
            ours.headers.get("Last-Modified"),
        ), path
    get_database(chatham).close()
    get_database(app).close()


def test_failed_unit_of_work_is_rolled_back(app):
    database = get_database(app)
    with pytest.raises(RuntimeError):
        with database.session() as session:
            session.execute("DELETE FROM episode_guests")
            session.execute("DELETE FROM episodes")
            raise RuntimeError("boom")
    with database.session() as session:
        assert session.fetch_one("SELECT count(*) AS n FROM episodes")["n"] == 30


def test_site_state_follows_every_change(app):
    database = get_database(app)

    def state():
        with database.session() as session:
            return session.fetch_one("SELECT version, episode_count FROM site_state WHERE id = 1")

    before = state()
    assert before["episode_count"] == 30
    with database.session() as session:
        session.execute(
            "UPDATE guests SET name = 'Renamed' WHERE id = (SELECT min(id) FROM guests)"
        )
    after_rename = state()
    assert after_rename["version"] > before["version"]
    with database.session() as session:
        episode_id = session.fetch_one("SELECT id FROM episodes WHERE number = 30")["id"]
        session.execute("DELETE FROM episodes WHERE id = %s", (episode_id,))
    after_delete = state()
    assert after_delete["episode_count"] == 29 and after_delete["version"] > after_rename["version"]


@pytest.mark.parametrize(
    "url, redacted",
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgres://u:p@ss/w?rd@h/db", "postgres://u:***@h/db"),  # raw "@", "/", "?"
        ("postgresql://u:pa?ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&PASSWORD=pw",
            "postgresql://u@h/db?sslmode=require&PASSWORD=***",
        ),
        ("postgresql://u@h/db?pass%77ord=pw&x=1", "postgresql://u@h/db?pass%77ord=***&x=1"),
        ("postgresql://h/db?sslpassword=pw", "postgresql://h/db?sslpassword=***"),
        (
            "postgresql://u@h:5432/db?application_name=a@b&password=pw",
            "postgresql://u@h:5432/db?application_name=a@b&password=***",
        ),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = pw", "host=h password = ***"),
        ("password='p w\\' x' host=h", "password=*** host=h"),
        ("password=p'w host=h", "password=*** host=h"),
        ("user=u passfile=/home/u/.pgpass host=h", "user=u passfile=/home/u/.pgpass host=h"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("sqlite:///var/a@b:c.db", "sqlite:///var/a@b:c.db"),
    ],
)
def test_redact_url_hides_the_password_in_every_form_libpq_reads(url, redacted):
    assert redact_url(url) == redacted
    if "pw" in url:
        assert "pw" not in redacted.replace("pwd", "")


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://relative.db", "sqlite:///"])
def test_unsupported_urls_are_refused_with_a_reason(url):
    with pytest.raises(ValueError, match="DATABASE_URL"):
        open_database(url)


def test_sqlite_file_is_created_on_first_use(tmp_path: Path):
    path = tmp_path / "var" / "new.sqlite3"
    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "VAR_DIR": str(tmp_path / "var")})
    response = app.test_client().get("/health")
    assert response.status_code == 200 and response.get_json()["episodes"] == 0
    assert path.exists()


def sqlite_with_schema(tmp_path: Path, script: str) -> Database:
    """A SQLite database whose app's schema script is ``script``, as in a copy of the template."""
    database = open_database(f"sqlite:///{tmp_path}/site.sqlite3")
    database.schema_sql = lambda: script  # type: ignore[method-assign]
    return database


def test_a_sqlite_schema_changed_without_a_new_user_version_is_named(tmp_path: Path) -> None:
    """The tables the queries need are missing: the error says the schema, not the file."""
    old = "CREATE TABLE IF NOT EXISTS episodes (id INTEGER); PRAGMA user_version = 4;"
    with sqlite_with_schema(tmp_path, old).session() as session:
        session.fetch_all("SELECT id FROM episodes")
    # The copy's new schema kept the old number: the app leaves the database as it is.
    new = "CREATE TABLE IF NOT EXISTS articles (id INTEGER); PRAGMA user_version = 4;"
    database = sqlite_with_schema(tmp_path, new)

    for statement in ("SELECT id FROM articles", "SELECT title FROM episodes"):
        with pytest.raises(DatabaseUnavailable) as raised, database.session() as session:
            session.fetch_all(statement)
        message = str(raised.value)
        assert "does not have the app's schema" in message and "PRAGMA user_version" in message
        assert "database unavailable" not in message


def test_a_sqlite_schema_without_a_user_version_is_named(tmp_path: Path) -> None:
    database = sqlite_with_schema(tmp_path, "CREATE TABLE IF NOT EXISTS articles (id INTEGER);")

    with pytest.raises(DatabaseUnavailable, match=r"sets no `PRAGMA user_version = N;`"):
        with database.session() as session:
            session.fetch_all("SELECT id FROM articles")


def test_a_sqlite_file_that_cannot_be_opened_is_still_unavailable(tmp_path: Path) -> None:
    """Only a missing table or column is the schema's fault; other errors keep their message."""
    (tmp_path / "site.sqlite3").write_bytes(b"not a database" * 100)

    with pytest.raises(DatabaseUnavailable, match="cannot open") as raised:
        with open_database(f"sqlite:///{tmp_path}/site.sqlite3").session() as session:
            session.fetch_all("SELECT 1")
    assert "schema" not in str(raised.value)
