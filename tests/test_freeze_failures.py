"""``flask freeze`` on bad input: a clear message, a non-zero exit, the live build intact."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask import Flask
from jinja2 import ChoiceLoader, DictLoader

from tests.conftest import SMALL_SEED, make_app
from tests.test_freeze import assert_matches_live, episodes_of, everything_under, execute, versions
from webapp import create_app
from webapp.db import get_database, queries
from webapp.db.seed import seed
from webapp.freeze import FreezeError, SiteBuild, freeze, output, site


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "site" / "build"


def freeze_cli(app: Flask, dest: Path):
    return app.test_cli_runner().invoke(args=["freeze", "--dest", str(dest)])


def live_build(dest: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """What nginx serves: the symlink's target and every file's (inode, mtime)."""
    return os.readlink(dest), versions(dest)


def test_a_destination_that_cannot_be_created_is_named(app, tmp_path):
    # Root ignores permissions, but not a regular file where a directory must be.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = freeze_cli(app, blocker / "build")
    assert result.exit_code == 1
    assert f"cannot write to {blocker / 'build'}: Not a directory" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_a_read_only_parent_directory_is_named(app, tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = freeze_cli(app, parent / "build")
    finally:
        parent.chmod(0o755)
    assert result.exit_code == 1
    assert "cannot write to" in result.output and "Permission denied" in result.output


def test_a_rendering_library_that_is_not_installed_is_named(app, dest, monkeypatch):
    """A copy of the template that drops a library from its dependencies, but not from the
    list of those whose versions a build digests, is told which and where: no traceback."""
    monkeypatch.setattr(site, "RENDERING_LIBRARIES", (*site.RENDERING_LIBRARIES, "no-such-lib"))
    site._library_versions.cache_clear()
    try:
        result = freeze_cli(app, dest)
    finally:
        site._library_versions.cache_clear()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no-such-lib is not installed, and RENDERING_LIBRARIES" in result.output
    assert not dest.exists()


def test_an_empty_database_keeps_the_previous_build(app, dest):
    freeze(app, dest)
    before = everything_under(dest)
    execute(app, "DELETE FROM episodes")
    result = freeze_cli(app, dest)
    assert result.exit_code == 1
    assert "the database has no episodes" in result.output
    assert everything_under(dest) == before


def test_an_episode_without_a_revision_stops_the_build_and_init_db_mends_it(app, dest):
    """Written with the triggers off (a bulk load, replication): the build cannot tell
    whether it changed, so it says so instead of dropping or trusting it."""
    freeze(app, dest)
    before = everything_under(dest)
    execute(
        app,
        "DELETE FROM episode_revisions"
        " WHERE episode_id = (SELECT id FROM episodes WHERE number = 4)",
    )

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert "episode(s) 4 have no revision" in result.output and "init-db" in result.output
    assert everything_under(dest) == before
    get_database(app).init_schema()
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


NUMBER_FIX = "set each such number to an integer (UPDATE episodes SET number = ... WHERE id = ...)"
REVISION_FIX = (
    "delete each such revision (DELETE FROM episode_revisions WHERE episode_id = ...)"
    " and run `flask --app webapp init-db`, which draws a new one"
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("statement", "found", "fix", "mend"),
    [
        (
            "UPDATE episodes SET number = 1.5 WHERE number = 4",
            "episodes.number holds 1.5 (REAL) for episode id 4",
            NUMBER_FIX,
            "UPDATE episodes SET number = 4 WHERE id = 4",
        ),
        (
            "UPDATE episode_revisions SET revision = 'abc' WHERE episode_id = 4",
            "episode_revisions.revision holds 'abc' (TEXT) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
        (  # SQLite stores an integer literal beyond 64 bits as a REAL
            "UPDATE episode_revisions SET revision = 9223372036854775808 WHERE episode_id = 4",
            "episode_revisions.revision holds 9.223372036854776e+18 (REAL) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
        (  # joined as its bytes: an integer JSON reads, beyond 64 bits
            "UPDATE episode_revisions SET revision = CAST('99999999999999999999' AS BLOB)"
            " WHERE episode_id = 4",
            "episode_revisions.revision holds b'99999999999999999999' (BLOB) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
        (  # JSON would read it as 1
            "UPDATE episode_revisions SET revision = 'true' WHERE episode_id = 4",
            "episode_revisions.revision holds 'true' (TEXT) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
        (  # one value, two items
            "UPDATE episode_revisions SET revision = '1,2' WHERE episode_id = 4",
            "episode_revisions.revision holds '1,2' (TEXT) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
        (  # joined as its bytes, it would read as an integer in range
            "UPDATE episodes SET number = CAST('4' AS BLOB) WHERE number = 4",
            "episodes.number holds b'4' (BLOB) for episode id 4",
            NUMBER_FIX,
            "UPDATE episodes SET number = 4 WHERE id = 4",
        ),
        (  # not UTF-8: Python's sqlite3 would raise reading it as text
            "UPDATE episode_revisions SET revision = CAST(x'ff' AS TEXT) WHERE episode_id = 4",
            "episode_revisions.revision holds '\ufffd' (TEXT) for episode id 4",
            REVISION_FIX,
            "DELETE FROM episode_revisions WHERE episode_id = 4",
        ),
    ],
    ids=[
        "real-number",
        "text",
        "beyond-64-bits",
        "blob-beyond-64-bits",
        "true",
        "comma",
        "blob-in-range",
        "not-utf-8",
    ],
)
def test_a_number_or_revision_that_is_not_a_64_bit_integer_is_named_and_its_fix_works(
    app, dest, statement, found, fix, mend
):
    """SQLite keeps any value in any column (its tables are not STRICT): a build says which
    column of which episode holds what, and what to do, instead of a traceback or blaming
    a missing revision."""
    freeze(app, dest)
    before = everything_under(dest)
    execute(app, statement)

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert f"Error: {found}: a build reads every number and revision" in result.output
    assert fix in result.output
    assert "no revision" not in result.output and "Traceback" not in result.output
    assert everything_under(dest) == before
    execute(app, mend)
    get_database(app).init_schema()
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_bad_value_is_named_with_each_column_s_fix(app, dest):
    freeze(app, dest)
    before = everything_under(dest)
    execute(app, "UPDATE episodes SET number = 'five' WHERE number = 5")
    execute(app, "UPDATE episode_revisions SET revision = 0.5 WHERE episode_id = 2")

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert (
        "Error: episode_revisions.revision holds 0.5 (REAL) for episode id 2;"
        " episodes.number holds 'five' (TEXT) for episode id 5: " in result.output
    )
    assert f"{NUMBER_FIX}; {REVISION_FIX}" in result.output
    assert everything_under(dest) == before


SLUG_FIX = (
    "set each such slug to one URL segment (UPDATE episodes SET slug = ... WHERE number = ...)"
)


@pytest.mark.parametrize(
    "slug",
    [
        *("../../../escape", "a/b", ".", "..", "", "a%2Fb", "a?b"),
        # A URL parser drops tabs and newlines: the build asked for another URL (a 301).
        *("a\tb", "a\nb", "a\rb"),
        # The URLs of the episode's transcript and chapters: the app and nginx answer those.
        *("transcript.html", "chapters.json"),
        # Its file, <slug>.html and <slug>.html.gz, over 255 bytes: ENAMETOOLONG.
        *("s" * 248, "é" * 124),
    ],
)
def test_a_slug_that_is_not_one_url_segment_is_named_and_nothing_is_written(app, dest, slug):
    """A page's file is episodes/<number>/<slug>.html: an editor's ``../../x`` wrote a file
    outside the build, ``.`` failed on a directory, ``%2F`` with a traceback; a tab made the
    build fail on a redirect, a 300-character slug on "File name too long", naming neither
    the episode nor the fix; ``transcript.html`` was written as a page nginx never serves
    (the transcript's URL is the transcript)."""
    freeze(app, dest)
    before = everything_under(dest)
    around = sorted(dest.parent.parent.rglob("*"))
    execute(app, "UPDATE episodes SET slug = %s WHERE number = 3", (slug,))

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert f"Error: episodes.slug holds {slug!r} for episode 3: " in result.output
    assert SLUG_FIX in result.output and "Traceback" not in result.output
    assert everything_under(dest) == before
    assert sorted(dest.parent.parent.rglob("*")) == around
    execute(app, "UPDATE episodes SET slug = 'a-good-slug' WHERE number = 3")
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


@pytest.mark.parametrize("number", [-7, -1, 2**31])
def test_an_episode_number_its_url_cannot_hold_is_named_and_nothing_is_written(app, dest, number):
    """Episode URLs hold a number from 0 to 2**31 - 1 (the app answers a 404 for others): a
    build wrote the page of episode -7 anyway, a file nginx served where the app says 404."""
    if number > 2**31 - 1 and app.config["DATABASE_URL"].startswith("postgresql"):
        pytest.skip("PostgreSQL's INTEGER holds no larger number")
    freeze(app, dest)
    before = everything_under(dest)
    execute(app, "UPDATE episodes SET number = %s WHERE number = 3", (number,))

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert f"Error: episodes.number holds {number}: " in result.output
    assert "a number from 0 to 2147483647" in result.output and "Traceback" not in result.output
    assert everything_under(dest) == before
    execute(app, "UPDATE episodes SET number = 3 WHERE number = %s", (number,))
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


@pytest.mark.parametrize(
    "chapters, shown",
    [
        ('[{"startTime": "abc", "title": "s"}]', "{'startTime': 'abc', 'title': 's'}"),
        ('[{"title": "no start"}]', "{'title': 'no start'}"),
        ('[{"startTime": 0, "title": "ok"}, 7]', "7 as chapter 2"),
        ('[{"startTime": -5, "title": "before the start"}]', "'startTime': -5"),
        ('[{"startTime": 0, "title": ["a list"]}]', "'title': ['a list']"),
    ],
)
def test_chapters_that_are_not_the_json_chapters_format_are_named(app, dest, chapters, shown):
    """The schema checks only that chapters are a JSON array: a build said KeyError:
    'startTime' or TypeError: 'int' object is not subscriptable, naming neither."""
    freeze(app, dest)
    before = live_build(dest)
    # Episode 12 has chapters in the seed.
    execute(
        app,
        "UPDATE episode_chapters SET chapters = %s"
        " WHERE episode_id = (SELECT id FROM episodes WHERE number = 12)",
        (chapters,),
    )

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert "BadChapters: episode_chapters.chapters of episode 12 holds " in result.output
    assert shown in result.output and "a startTime (seconds, a number at least 0)" in result.output
    assert "Traceback" not in result.output
    assert live_build(dest) == before


def test_a_postgresql_database_from_before_revisions_asks_for_init_db(app, dest):
    if get_database(app).dialect != "postgresql":
        pytest.skip("SQLite upgrades itself when the app opens it (tests/test_revisions.py)")
    freeze(app, dest)
    before = everything_under(dest)
    execute(app, "DROP TABLE episode_revisions")
    get_database(app).close()

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert "run `flask --app webapp init-db`" in result.output and "Traceback" not in result.output
    assert "freeze again" not in result.output  # init-db mends it, not waiting
    assert everything_under(dest) == before


def test_an_unreachable_database_is_reported_without_its_password(tmp_path, dest):
    app = create_app(
        {
            "DATABASE_URL": "postgresql://podcast:secret-pw@127.0.0.1:1/podcast",
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_CONNECT_TIMEOUT": 1,
        }
    )
    result = freeze_cli(app, dest)
    assert result.exit_code == 1
    assert "cannot connect to postgresql://podcast:***@127.0.0.1:1/podcast" in result.output
    assert "secret-pw" not in result.output
    assert not dest.exists() and not dest.is_symlink()


def test_a_template_error_on_one_page_names_it_and_keeps_the_live_build(app, dest):
    freeze(app, dest)
    before = live_build(dest)
    broken = episodes_of(app)[-3]  # episode 3
    execute(app, "UPDATE episodes SET title = %s WHERE number = 3", ("Edited before the bug",))
    original_loader = app.jinja_env.loader
    app.jinja_env.loader = ChoiceLoader(
        [
            DictLoader(
                {
                    "episode.html": '{% extends "base.html" %}'
                    "{% block main %}{{ 1 / (episode.number - 3) }}{% endblock %}",
                }
            ),
            original_loader,
        ]
    )

    result = freeze_cli(app, dest)

    assert result.exit_code == 1
    assert (
        f"Error: cannot freeze {broken.path}: ZeroDivisionError: division by zero" in result.output
    )
    assert live_build(dest) == before
    # Fixed, the next build succeeds from the half-written spare tree.
    app.jinja_env.loader = original_loader
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


def test_a_directory_that_is_not_a_build_is_left_alone(app, dest):
    dest.mkdir(parents=True)
    (dest / "precious.txt").write_text("keep me")
    result = freeze_cli(app, dest)
    assert result.exit_code == 1
    assert "exists and is not a build of `flask freeze`" in result.output
    assert [path.name for path in dest.iterdir()] == ["precious.txt"]


def test_a_symlink_to_elsewhere_is_left_alone(app, tmp_path, dest):
    dest.parent.mkdir(parents=True)
    dest.symlink_to(tmp_path)
    result = freeze_cli(app, dest)
    assert result.exit_code == 1
    assert f"links to {tmp_path}, not to a build" in result.output
    assert os.readlink(dest) == str(tmp_path)


def test_an_empty_directory_becomes_the_build(app, dest):
    dest.mkdir(parents=True)  # as a deploy might create it for nginx
    assert freeze_cli(app, dest).exit_code == 0
    assert dest.is_symlink()
    assert_matches_live(dest, app)


def test_a_second_freeze_into_the_same_destination_waits_its_turn(app, dest):
    with SiteBuild(app, dest):
        with pytest.raises(FreezeError, match="another freeze or pull is writing to"):
            freeze(app, dest)
    freeze(app, dest)  # the lock is released with the first build


def test_a_full_disk_is_named_with_what_to_do_and_the_unfinished_tree_is_removed(
    app, dest, monkeypatch
):
    """A build that runs out of space says so and what to do, and takes its unfinished tree
    away with it: left there, it would keep the disk full for nginx's logs and the database
    until some later build that changes something."""
    freeze(app, dest)
    before = live_build(dest)
    builds = dest.with_name(f"{dest.name}.builds")
    write = output.BuildTrees.write
    written = 0

    class NoSpace(list):
        """Pieces of a file that the disk has no room for, once the file is open."""

        def __iter__(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_until_full(self, path, data, *args, **kwargs):
        nonlocal written
        written += 1
        return write(self, path, NoSpace() if written > 20 else data, *args, **kwargs)

    monkeypatch.setattr(output.BuildTrees, "write", write_until_full)
    app.config["SITE_TITLE"] = "Another title"  # every page anew
    result = freeze_cli(app, dest)

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot write the build for {dest}: No space left on device (" in result.output
    assert "[Errno" not in result.output
    assert "free space" in result.output and "the live build is unchanged" in result.output
    assert live_build(dest) == before
    assert sorted(path.name for path in builds.iterdir()) == [".lock", os.readlink(dest)[-1]]
    monkeypatch.undo()
    assert freeze_cli(app, dest).exit_code == 0
    assert_matches_live(dest, app)


def test_files_owned_by_another_user_name_the_owner_and_the_fix(tmp_path, dest):
    """A build once frozen as root, then by the service's user: fs.protected_hardlinks refuses
    the links a build makes to another user's files. The message says whose they are and what
    to do, and the unfinished tree goes. Played here by root without the capabilities that
    override file ownership, on a tree owned by nobody."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to play a user who does not own the build")
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "1":
        pytest.skip("fs.protected_hardlinks is off: links to others' files are allowed")
    app = make_app(f"sqlite:///{tmp_path}/owned.sqlite3", tmp_path)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    freeze(app, dest)
    nobody = pwd.getpwnam("nobody")
    for path in [dest.resolve(), *dest.resolve().rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    before = live_build(dest)
    execute(app, "UPDATE episodes SET title = %s WHERE number = 4", ("Edited",))
    settings = {name: str(app.config[name]) for name in ("DATABASE_URL", "VAR_DIR", "SITE_URL")}
    result = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner,-chown"]
        + [sys.executable, "-m", "flask", "--app", "webapp", "freeze", "--dest", str(dest)],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        check=False,
    )
    builds = dest.with_name(f"{dest.name}.builds")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Error: cannot write the build for" in result.stderr
    assert "is owned by nobody, and this freeze runs as root" in result.stderr
    assert f"`chown -R root {builds}`" in result.stderr
    assert live_build(dest) == before
    assert sorted(path.name for path in builds.iterdir()) == [".lock", "a"]


class Outage:
    """A TCP relay to the database that can go down, as a server or its network does."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                self.sockets += [client, server]
                for one, other in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(one, other), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        # shutdown first: close alone leaves the socket listening while accept() waits on it.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for connection in self.sockets:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


def app_behind_outage(postgres_url: str, tmp_path: Path) -> tuple[Flask, Outage]:
    """A seeded app whose PostgreSQL connections go through an :class:`Outage` relay."""
    url = urlsplit(postgres_url)
    outage = Outage(url.hostname or "127.0.0.1", url.port or 5432)
    relayed = url._replace(netloc=url.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{outage.port}")
    app = make_app(urlunsplit(relayed), tmp_path)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    return app, outage


def test_the_database_going_away_during_a_build_is_named(postgres_url, tmp_path, dest):
    """Not "the app answered 503" for the first page that needed the database: what failed,
    and what to do."""
    app, outage = app_behind_outage(postgres_url, tmp_path)
    with pytest.raises(FreezeError) as failure, SiteBuild(app, dest) as build:
        outage.down()
        for page in build.pending:
            build.render(page)
    message = str(failure.value)
    # The session's connection died; its one retry found nothing listening.
    # Not "the app answered 503": the random schema name in the URL may hold the digits.
    assert message.startswith("cannot connect to postgresql://")
    assert "the app answered" not in message
    assert "the live build is unchanged: freeze again once the database answers" in message
    assert not dest.exists() and not dest.is_symlink()
    get_database(app).close()


def test_the_database_going_away_after_a_build_leaves_it_live(
    postgres_url, tmp_path, dest, monkeypatch
):
    """The check for data changed during the build (freeze_command) cannot reach the database:
    the build is live, so the command succeeds (systemd then reloads nginx) and says so."""
    app, outage = app_behind_outage(postgres_url, tmp_path)
    commit = SiteBuild.commit

    def commit_then_outage(build: SiteBuild):
        report = commit(build)
        outage.down()
        return report

    monkeypatch.setattr(SiteBuild, "commit", commit_then_outage)
    result = freeze_cli(app, dest)
    assert result.exit_code == 0, result.output
    assert "The build is live; whether the data changed during it is unknown" in result.output
    assert dest.is_symlink() and (dest / "index.html").is_file()
    get_database(app).close()


def test_a_freeze_that_changes_nginx_s_redirects_says_nginx_must_reload(app, dest):
    freeze_cli(app, dest)
    execute(app, "UPDATE episodes SET title = %s WHERE number = 4", ("Only a title",))
    assert "nginx must reload" not in freeze_cli(app, dest).output
    execute(app, "UPDATE episodes SET slug = %s WHERE number = 4", ("a-new-slug",))
    result = freeze_cli(app, dest)
    assert result.exit_code == 0
    assert "nginx must reload: its redirect maps changed" in result.output


def test_a_destination_inside_a_build_names_the_build_to_use(app, tmp_path, dest):
    """FREEZE_DIR set to what `readlink -f` gives (the live tree), or to a link to the build:
    "move it away" or "remove the link" would take the site from nginx."""
    freeze(app, dest)
    before = live_build(dest)
    alias = tmp_path / "alias"
    alias.symlink_to(dest)
    for wrong in (dest.resolve(), alias):
        result = freeze_cli(app, wrong)
        assert result.exit_code == 1
        assert f"use {dest} (FREEZE_DIR or --dest)" in result.output, result.output
        assert "move it away" not in result.output and "remove the link" not in result.output
        assert not wrong.with_name(f"{wrong.name}.builds").exists()  # nothing made beside it
    assert live_build(dest) == before


def test_a_build_that_renders_every_page_says_why(app, dest):
    """An operator who expects an edit to cost milliseconds is told why a build took seconds."""
    first = freeze_cli(app, dest)
    assert "Every page rendered: there was no build in" in first.output
    execute(app, "UPDATE episodes SET title = %s WHERE number = 4", ("Edited",))
    assert "Every page rendered" not in freeze_cli(app, dest).output
    app.config["SITE_TITLE"] = "Another title"
    changed = freeze_cli(app, dest)
    assert changed.exit_code == 0
    assert "Every page rendered: the code, templates, rendering libraries or SITE_*" in (
        changed.output
    )
    (dest.resolve() / ".freeze-state.json").unlink()
    untrusted = freeze_cli(app, dest)
    assert "Every page rendered: the live build's state file is missing or unreadable" in (
        untrusted.output
    )


def test_a_destination_inside_the_live_build_is_refused(app, dest):
    """`--dest build/sub` would write a second build into the tree nginx serves, and the next
    pull of the build would find files its state does not list."""
    freeze(app, dest)
    before = live_build(dest)
    for inside in (dest / "sub", dest / "episodes" / "new", dest.with_name("build.builds") / "c"):
        result = freeze_cli(app, inside)
        assert result.exit_code == 1, result.output
        assert f"inside the build at {dest}" in result.output, result.output
    assert live_build(dest) == before
    assert sorted(os.listdir(dest.with_name("build.builds"))) == [".lock", "a"]


def test_the_root_directory_is_refused_as_a_destination(app):
    result = freeze_cli(app, Path("/"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: / cannot be a build" in result.output, result.output


def test_a_refused_destination_leaves_nothing_beside_it(app, tmp_path):
    """A file, the database say, named as --dest by mistake: refused, and no <dest>.builds made."""
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / "podcast.sqlite3"
    database.write_bytes(b"SQLite format 3\0")
    result = freeze_cli(app, database)
    assert result.exit_code == 1 and "is not a build of `flask freeze`" in result.output
    assert os.listdir(tmp_path / "data") == ["podcast.sqlite3"]


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_an_episode_deleted_after_the_build_read_its_table_is_named(
    app, dest, monkeypatch, incremental
):
    """The table of revisions is read first, the episodes after it: one deleted in between
    fails the build with what happened and what to do, the live build left as it was."""
    if incremental:
        freeze(app, dest)
        execute(app, "UPDATE episodes SET title = title || '!' WHERE number = 3")
    before = live_build(dest) if incremental else None
    read_table = queries.episode_table

    def then_delete(session):
        table = read_table(session)
        execute(app, "DELETE FROM episodes WHERE number = 3")  # another connection, committed
        return table

    monkeypatch.setattr(queries, "episode_table", then_delete)
    with pytest.raises(FreezeError, match="episode 3 was deleted while the build ran"):
        freeze(app, dest)
    assert (live_build(dest) if incremental else None) == before
