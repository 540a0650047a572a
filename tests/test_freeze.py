"""``flask freeze``: frozen pages equal live ones, are pre-compressed, and rebuild incrementally.

Every test freezes the small seed into a temporary destination on both
backends and checks the files against a separately created live app on the
same database.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from flask import Flask

from tests.conftest import SMALL_SEED, make_app
from webapp import create_app
from webapp.blueprints.feed import FEED
from webapp.blueprints.pages import CATALOGUE, LATEST_COUNT
from webapp.db import get_database, get_session, queries
from webapp.db.seed import seed
from webapp.freeze import SiteBuild, freeze
from webapp.freeze.command import MAX_BUILDS
from webapp.freeze.site import site_freezer
from webapp.models import Episode
from webapp.settings import SETTINGS

TEXT_SUFFIXES = {".html", ".xml", ".css", ".js", ".svg", ".json", ".txt"}
METADATA_FILES = {
    "manifest.json",
    ".freeze-state.json",
    "nginx/episodes.map",
    "nginx/redirects.conf",
}
#: Enough episodes for the feed and the catalogue to be gzipped in several chunks.
CHUNKED_SEED = 300
#: Composed from one fragment per episode, and compressed in chunks.
LISTING_FILES = {"episodes/index.html", "episodes/rss.xml"}


def episodes_of(app: Flask) -> list[Episode]:
    with app.app_context():
        return queries.all_episodes(get_session())


def execute(app: Flask, statement: str, params: tuple = ()) -> None:
    with get_database(app).session() as session:
        session.execute(statement, params)


def expected_pages(app: Flask) -> dict[str, tuple[str, int]]:
    """URL -> (file, status): the layout agreed with deploy/nginx, for every page of the site."""
    pages = {
        "/": ("index.html", 200),
        "/episodes/": ("episodes/index.html", 200),
        "/episodes/rss": ("episodes/rss.xml", 200),
        "/artwork.png": ("artwork.png", 200),
        "/this-page-does-not-exist": ("404.html", 404),
    }
    pages |= {
        f"/static/{file.name}": (f"static/{file.name}", 200)
        for file in Path(app.static_folder).iterdir()
    }
    pages |= {episode.path: (f"{episode.path[1:]}.html", 200) for episode in episodes_of(app)}
    return pages


def files_of(dest: Path) -> dict[str, os.stat_result]:
    """Every file of the live build, by path relative to ``dest``."""
    root = dest.resolve()
    return {str(path.relative_to(root)): path.stat() for path in root.rglob("*") if path.is_file()}


def versions(dest: Path) -> dict[str, tuple[int, int]]:
    """Each file's (inode, mtime): what nginx's ETag and Last-Modified come from."""
    return {path: (stat.st_ino, stat.st_mtime_ns) for path, stat in files_of(dest).items()}


def everything_under(dest: Path) -> dict[str, tuple[int, int] | str]:
    """Every entry of both build trees and the symlink: to prove a freeze wrote nothing."""
    builds = dest.with_name(f"{dest.name}.builds")
    entries: dict[str, tuple[int, int] | str] = {"<dest>": os.readlink(dest)}
    for path in [builds, *builds.rglob("*")]:
        stat = path.lstat()
        entries[str(path.relative_to(builds))] = (stat.st_ino, stat.st_mtime_ns)
    return entries


def redirect_map(dest: Path) -> dict[int, str]:
    """nginx/episodes.map as episode number -> path."""
    lines = (dest / "nginx/episodes.map").read_text().splitlines()
    return {
        int(number): path.removesuffix(";") for number, path in (line.split(" ") for line in lines)
    }


def live_twin(app: Flask) -> Flask:
    """A second app with the same settings and database, as uWSGI would run it."""
    return create_app({name: app.config[name] for name in SETTINGS} | {"TESTING": True})


def assert_matches_live(dest: Path, app: Flask) -> None:
    """Every page's file holds the bytes the live ``app`` serves; nothing else is in the build."""
    live = live_twin(app)
    client = live_twin(app).test_client()
    pages = expected_pages(live)
    for url, (path, status) in pages.items():
        response = client.get(url)
        assert response.status_code == status, url
        assert (dest / path).read_bytes() == response.data, url
    compressed = {f"{path}.gz" for path, _ in pages.values() if Path(path).suffix in TEXT_SUFFIXES}
    assert set(files_of(dest)) == {path for path, _ in pages.values()} | compressed | METADATA_FILES
    get_database(live).close()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "site" / "build"


def test_every_frozen_page_is_the_bytes_the_live_app_serves(app, dest):
    report = freeze(app, dest)
    # /, /episodes/, the feed, 404, the stylesheet, the artwork
    assert report.pages == SMALL_SEED + 6
    assert_matches_live(dest, app)


def test_layout_is_what_nginx_is_configured_for(app, dest):
    freeze(app, dest)
    assert dest.is_symlink() and os.readlink(dest) in {"build.builds/a", "build.builds/b"}
    episode = episodes_of(app)[0]
    for path in [
        "index.html",
        "episodes/index.html",
        f"episodes/{episode.number}/{episode.slug}.html",
        "episodes/rss.xml",
        "404.html",
        "static/style.css",
        "artwork.png",
    ]:
        assert (dest / path).is_file(), path
    assert b"<rss" in (dest / "episodes/rss.xml").read_bytes()
    assert b"Not Found" in (dest / "404.html").read_bytes()


def test_text_files_have_a_deterministic_gzip_sibling_with_the_same_mtime(app, dest, tmp_path):
    freeze(app, dest)
    other_build = freeze(app, tmp_path / "other" / "build").destination
    files = files_of(dest)
    pages = [
        path for path in files if Path(path).suffix in TEXT_SUFFIXES and path not in METADATA_FILES
    ]
    assert len(pages) == SMALL_SEED + 5
    for path in pages:
        original = (dest / path).read_bytes()
        compressed = (dest / f"{path}.gz").read_bytes()
        assert gzip.decompress(compressed) == original
        # Level 9 ("maximum compression"), mtime 0, no file name: the same bytes on every build.
        assert compressed[3] == 0 and compressed[4:8] == bytes(4) and compressed[8] == 2
        assert compressed == (other_build / f"{path}.gz").read_bytes()
        if path in LISTING_FILES:
            # In chunks (see chunked_gzip), within 1% of one-piece gzip -9.
            assert len(compressed) <= 1.01 * len(gzip.compress(original, compresslevel=9, mtime=0))
        else:
            assert compressed == gzip.compress(original, compresslevel=9, mtime=0)
        assert files[f"{path}.gz"].st_mtime_ns == files[path].st_mtime_ns
    assert "artwork.png.gz" not in files  # PNG is compressed already


def test_a_rebuild_with_nothing_changed_writes_nothing(app, dest):
    freeze(app, dest)
    before = everything_under(dest)
    report = freeze(app, dest)
    assert (report.rendered, report.changed) == ((), ())
    assert "Nothing changed" in report.summary()
    assert everything_under(dest) == before


def test_an_edited_episode_rerenders_it_the_lists_and_the_feed_only(app, dest):
    freeze(app, dest)
    before = versions(dest)
    edited = episodes_of(app)[-5]  # episode 5: not among the home page's latest
    execute(
        app,
        "UPDATE episodes SET title = %s WHERE number = %s",
        ("A corrected title", edited.number),
    )

    report = freeze(app, dest)

    assert set(report.rendered) == {edited.path, "/episodes/", "/episodes/rss"}
    page = f"{edited.path[1:]}.html"
    assert report.changed == tuple(
        sorted(
            [
                page,
                f"{page}.gz",
                "episodes/index.html",
                "episodes/index.html.gz",
                "episodes/rss.xml",
                "episodes/rss.xml.gz",
            ]
        )
    )
    after = versions(dest)
    for path, version in before.items():
        if path not in {*report.changed, "manifest.json", ".freeze-state.json"}:
            assert after[path] == version, f"{path} was rewritten"
    assert after[page][1] > before[page][1]
    assert json.loads((dest / "manifest.json").read_text())["changed"] == list(report.changed)
    assert_matches_live(dest, app)


def test_an_edit_plans_and_renders_only_what_it_touches(app, dest, monkeypatch):
    """An incremental build considers the edited episode's page and the pages that list
    it; of the catalogue and the feed it renders that episode's fragment alone."""
    freeze(app, dest)
    edited = episodes_of(app)[-5]
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited", edited.number))
    fragments: list[int] = []
    for listing in (CATALOGUE, FEED):
        real = listing.fragments.render
        monkeypatch.setattr(
            listing.fragments,
            "render",
            lambda episodes, real=real: (
                fragments.extend(e.number for e in episodes) or real(episodes)
            ),
        )

    with SiteBuild(app, dest) as build:
        assert build.incremental
        assert [page.url for page in build.pages if page.number is not None] == [edited.path]
        for page in build.pending:
            build.render(page)
        build.commit()

    assert fragments == [edited.number, edited.number]
    assert_matches_live(dest, app)


def test_an_episode_on_the_home_page_rerenders_it_too(app, dest):
    freeze(app, dest)
    edited = episodes_of(app)[1]
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Fresh title", edited.number))

    report = freeze(app, dest)

    assert set(report.rendered) == {edited.path, "/", "/episodes/", "/episodes/rss"}
    assert {"index.html", "index.html.gz"} <= set(report.changed)
    assert b"Fresh title" in (dest / "index.html").read_bytes()
    assert_matches_live(dest, app)


def test_a_newly_published_episode_adds_its_page_and_its_redirect(app, dest):
    freeze(app, dest)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED + 1)
    published = episodes_of(app)[0]
    assert published.number == SMALL_SEED + 1

    report = freeze(app, dest)

    assert set(report.rendered) == {published.path, "/", "/episodes/", "/episodes/rss"}
    page = f"{published.path[1:]}.html"
    assert {page, f"{page}.gz", "index.html", "nginx/episodes.map"} <= set(report.changed)
    assert report.removed == ()
    assert redirect_map(dest)[published.number] == published.path
    assert_matches_live(dest, app)


def contents(dest: Path) -> dict[str, bytes]:
    """Every page and .gz file of the live build, by path."""
    return {
        path: (dest / path).read_bytes() for path in files_of(dest) if path not in METADATA_FILES
    }


def test_incremental_rebuilds_are_byte_for_byte_a_fresh_build(empty_app, dest, tmp_path):
    """Fragments and gzip chunks kept from earlier builds never show: after each kind of
    change, every file of the rebuilt site is the file a build from scratch makes."""
    app = empty_app
    with get_database(app).session() as session:
        seed(session, CHUNKED_SEED)  # several gzip chunks in the feed and the catalogue
    freeze(app, dest)
    guest_id = (
        "SELECT guest_id FROM episode_guests"
        " WHERE episode_id = (SELECT id FROM episodes WHERE number = 40)"
    )
    changes = [
        ("UPDATE episodes SET title = %s WHERE number = %s", ('Edited <title> & "more"', 130)),
        # An item that grows by 20 kB: every later fragment and chunk moves.
        (
            "UPDATE episodes SET show_notes = show_notes || %s WHERE number = %s",
            ("<p>More notes.</p>" * 1000, 200),
        ),
        (f"UPDATE guests SET name = %s WHERE id IN ({guest_id})", ("Renamed Guest",)),
        ("DELETE FROM episodes WHERE number = %s", (64,)),
        ("UPDATE episodes SET slug = %s WHERE number = %s", ("a-new-slug", 257)),
        None,  # a newly published episode
    ]
    for step, change in enumerate(changes):
        if change is None:
            with get_database(app).session() as session:
                seed(session, CHUNKED_SEED + 1)
        else:
            execute(app, *change)
        report = freeze(app, dest)
        fresh = freeze(app, tmp_path / f"fresh-{step}" / "build").destination
        assert report.rendered and contents(dest) == contents(fresh), change
    assert_matches_live(dest, app)


@pytest.mark.parametrize("damage", ["shifted", "not JSON"])
def test_layouts_that_do_not_fit_their_files_are_not_trusted(empty_app, dest, tmp_path, damage):
    """A state file that no longer describes the listings (edited, or from other code)
    makes the next build render them whole, not copy the wrong bytes."""
    app = empty_app
    with get_database(app).session() as session:
        seed(session, CHUNKED_SEED)
    freeze(app, dest)
    state_file = dest / ".freeze-state.json"
    state = json.loads(state_file.read_text())
    for path in LISTING_FILES:
        page, gz = state["files"][path], state["files"][f"{path}.gz"]
        if damage == "shifted":
            page[4] = json.dumps(
                json.loads(page[4]) | {"before": json.loads(page[4])["before"] + 1}
            )
            chunks = json.loads(gz[4])["chunks"]
            key, digest, deflated, *rest = chunks[0]
            gz[4] = json.dumps({"chunks": [[key, digest, deflated + 1, *rest], *chunks[1:]]})
        else:
            page[4] = gz[4] = "not JSON"
    state_file.write_text(json.dumps(state))
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited", 150))

    freeze(app, dest)

    assert contents(dest) == contents(freeze(app, tmp_path / "fresh" / "build").destination)


def test_a_restored_backup_never_passes_for_the_lost_history(tmp_path, dest):
    """Restore a backup, edit: the revisions of the edits made since the backup
    (and built into the live site) must not come back for other content."""
    path = tmp_path / "podcast.sqlite3"
    app = make_app(f"sqlite:///{path}", tmp_path)
    with get_database(app).session() as session:
        seed(session, SMALL_SEED)
    get_database(app).close()
    backup = tmp_path / "backup.sqlite3"
    with closing(sqlite3.connect(path)) as live, closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Lost with the restore", 5))
    freeze(app, dest)
    get_database(app).close()

    with closing(sqlite3.connect(backup)) as copy, closing(sqlite3.connect(path)) as live:
        copy.backup(live)
    execute(
        app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited after the restore", 5)
    )
    freeze(app, dest)

    assert contents(dest) == contents(freeze(app, tmp_path / "fresh" / "build").destination)
    assert_matches_live(dest, app)
    get_database(app).close()


def test_a_live_state_file_gone_or_of_another_version_means_a_full_rebuild(app, dest, tmp_path):
    freeze(app, dest)
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Second build", 6))
    freeze(app, dest)  # now each tree has been live once
    for step, damage in enumerate(["gone", "other version"]):
        state_file = dest / ".freeze-state.json"
        if damage == "gone":
            state_file.unlink()
        else:
            state = json.loads(state_file.read_text())
            state["files"] = {
                path: [*fields, "a field of a later version"]
                for path, fields in state["files"].items()
            }
            state_file.write_text(json.dumps(state))
        execute(app, "DELETE FROM episodes WHERE number = %s", (20 + step,))

        report = freeze(app, dest)

        assert report.pages == len(report.rendered)
        assert contents(dest) == contents(
            freeze(app, tmp_path / f"fresh-{step}" / "build").destination
        )
        assert_matches_live(dest, app)


def test_unchanged_files_keep_their_inode_and_mtime_over_many_rebuilds(app, dest):
    """Builds alternate between two trees; files no build changed never move."""
    freeze(app, dest)
    untouched = "episodes/1/" + episodes_of(app)[-1].slug + ".html"
    first = versions(dest)[untouched]
    for number in [7, 8, 7, 9]:
        execute(
            app, "UPDATE episodes SET summary = summary || %s WHERE number = %s", (" More.", number)
        )
        report = freeze(app, dest)
        assert len(report.rendered) == 3  # the episode, the catalogue, the feed
        assert versions(dest)[untouched] == first
        assert_matches_live(dest, app)


def test_a_renamed_guest_rerenders_the_pages_that_show_them(app, dest):
    freeze(app, dest)
    episode = episodes_of(app)[-3]
    guest = episode.guests[0]
    execute(app, "UPDATE guests SET name = %s WHERE slug = %s", ("Renamed Guest", guest.slug))
    with_guest = {e.path for e in episodes_of(app) if guest.slug in {g.slug for g in e.guests}}

    report = freeze(app, dest)

    on_home_page = with_guest & {e.path for e in episodes_of(app)[:LATEST_COUNT]}
    assert set(report.rendered) == with_guest | {"/episodes/", "/episodes/rss"} | (
        {"/"} if on_home_page else set()
    )
    assert b"Renamed Guest" in (dest / f"{episode.path[1:]}.html").read_bytes()
    assert_matches_live(dest, app)


def test_a_deleted_episode_loses_its_files_and_its_redirect(app, dest):
    freeze(app, dest)
    deleted = episodes_of(app)[-4]
    execute(app, "DELETE FROM episodes WHERE number = %s", (deleted.number,))

    report = freeze(app, dest)

    page = f"{deleted.path[1:]}.html"
    assert report.removed == (page, f"{page}.gz")
    assert set(report.removed) <= set(report.changed)
    assert not (dest / page).parent.exists()
    assert deleted.number not in redirect_map(dest)
    assert_matches_live(dest, app)


def test_a_new_slug_moves_the_page_and_its_redirect(app, dest):
    freeze(app, dest)
    episode = episodes_of(app)[-6]
    execute(
        app, "UPDATE episodes SET slug = %s WHERE number = %s", ("a-better-slug", episode.number)
    )

    report = freeze(app, dest)

    old, new = f"{episode.path[1:]}.html", f"episodes/{episode.number}/a-better-slug.html"
    assert {old, f"{old}.gz"} == set(report.removed)
    assert {new, f"{new}.gz", "nginx/episodes.map"} <= set(report.changed)
    assert redirect_map(dest)[episode.number] == f"/episodes/{episode.number}/a-better-slug"
    assert_matches_live(dest, app)


def test_another_page_frozen_in_an_episodes_directory_is_not_taken_for_an_old_page(app, dest):
    """A site that also freezes transcripts (episodes/<n>/transcript.html, beside the page):
    an edit or a new slug of the episode removes its old page, not the transcript."""
    episode = episodes_of(app)[-3]
    number = episode.number
    site_freezer(app).register_generator(lambda: [("podcast.transcript", {"number": number})])
    transcript = f"episodes/{number}/transcript.html"
    freeze(app, dest)
    assert (dest / transcript).is_file()

    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", ("Edited", number))
    edited = freeze(app, dest)
    execute(app, "UPDATE episodes SET slug = %s WHERE number = %s", ("new-slug", number))
    moved = freeze(app, dest)

    assert edited.removed == ()
    old = f"{episode.path[1:]}.html"
    assert set(moved.removed) == {old, f"{old}.gz"}
    assert (dest / transcript).read_bytes() == app.test_client().get(f"/{transcript}").data
    assert (dest / f"{transcript}.gz").is_file()
    assert (dest / f"episodes/{number}/new-slug.html").is_file()


def test_a_settings_change_rerenders_every_page_but_keeps_identical_files(
    app, database_url, tmp_path, dest
):
    freeze(app, dest)
    before = versions(dest)
    renamed = make_app(database_url, tmp_path, SITE_TITLE="Talk Faster Python")

    report = freeze(renamed, dest)

    assert report.pages == len(report.rendered)
    assert versions(dest)["static/style.css"] == before["static/style.css"]
    assert "index.html" in report.changed
    assert_matches_live(dest, renamed)


def test_other_feed_bytes_from_the_same_data_get_other_validators(
    app, database_url, tmp_path, dest
):
    """A title of the same length: the same data, the same size, other bytes. nginx's ETag
    ("<mtime>-<size>") and Last-Modified must change all the same, or a client holding them
    would be told 304 and keep the old feed."""
    freeze(app, dest)
    feed = dest / "episodes/rss.xml"
    before, old_bytes = feed.stat(), feed.read_bytes()
    retitled = make_app(database_url, tmp_path, SITE_TITLE=app.config["SITE_TITLE"].swapcase())

    freeze(retitled, dest)

    after = feed.stat()
    assert feed.read_bytes() != old_bytes and after.st_size == before.st_size
    assert after.st_mtime_ns > before.st_mtime_ns
    assert (dest / "episodes/rss.xml.gz").stat().st_mtime_ns == after.st_mtime_ns
    freeze(retitled, dest)  # nothing changed: the time stays
    assert feed.stat().st_mtime_ns == after.st_mtime_ns


def test_the_episode_map_covers_every_episode_redirect_the_live_app_makes(app, dest):
    freeze(app, dest)
    redirects = redirect_map(dest)
    client = live_twin(app).test_client()
    episodes = episodes_of(app)
    assert set(redirects) == {episode.number for episode in episodes}
    for episode in episodes:
        for url in [f"/episodes/{episode.number}", f"/episodes/{episode.number}/wrong-slug"]:
            response = client.get(url)
            assert response.status_code == 301
            assert response.headers["Location"] == redirects[episode.number]
        assert (dest / f"{redirects[episode.number][1:]}.html").is_file()
    unknown = SMALL_SEED + 1
    assert client.get(f"/episodes/{unknown}").status_code == 404
    assert unknown not in redirects and 0 not in redirects


def test_the_other_redirect_rules_are_the_live_apps_for_urls_next_to_frozen_ones(app, dest):
    """A frozen page's URL with its trailing slash toggled: wherever the app
    redirects, nginx/redirects.conf does the same; nowhere else."""
    freeze(app, dest)
    rules = {
        source: (int(code), target)
        for source, code, target in re.findall(
            r"^location = (\S+) \{ return (\d{3}) (\S+); \}$",
            (dest / "nginx/redirects.conf").read_text(),
            re.M,
        )
    }
    client = live_twin(app).test_client()
    redirected = {}
    for url in expected_pages(app):
        neighbour = url[:-1] if url.endswith("/") else f"{url}/"
        response = client.get(neighbour)
        if neighbour and 300 <= response.status_code < 400:
            redirected[neighbour] = (
                response.status_code,
                urlsplit(response.headers["Location"]).path,
            )
    assert redirected == {"/episodes": (308, "/episodes/")}
    assert rules == redirected


def test_a_slug_that_would_break_nginx_syntax_is_percent_encoded(app, dest):
    execute(app, "UPDATE episodes SET slug = %s WHERE number = 2", ('odd slug; $x "quoted"',))
    freeze(app, dest)
    path = redirect_map(dest)[2]
    assert not set(path) & set(" ;$\"'{}")
    location = live_twin(app).test_client().get("/episodes/2").headers["Location"]
    assert unquote(path) == unquote(location) == '/episodes/2/odd slug; $x "quoted"'
    assert (dest / f"{unquote(path)[1:]}.html").is_file()


@pytest.mark.parametrize(
    "slug", ["release-v1.0", "index.html", "x.html.gz", ".net-rocks", "a\x01b", "a\x0bb"]
)
def test_a_slug_with_a_dot_is_still_a_page_nginx_finds(app, dest, slug):
    """nginx looks for an episode page at ``$uri.html``: a slug ``release-v1.0`` was
    written as ``release-v1.0`` (a name with an extension was taken for a file's), which
    nginx never found, so it redirected the page's URL to itself. A leading dot or a
    control character other than a tab or line break is a page too, as it was before
    (nginx's episode location comes before its refusal of dot files; a link encodes it)."""
    execute(app, "UPDATE episodes SET slug = %s WHERE number = 2", (slug,))
    freeze(app, dest)
    assert (dest / f"episodes/2/{slug}.html").is_file()
    assert not (dest / f"episodes/2/{slug}").exists()
    assert_matches_live(dest, app)


def test_the_manifest_describes_the_build(app, dest):
    report = freeze(app, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["pages"] == report.pages == SMALL_SEED + 6
    assert manifest["changed"] == sorted(
        set(files_of(dest)) - {"manifest.json", ".freeze-state.json"}
    )
    assert manifest["removed"] == []
    assert len(manifest["rendered"]) == report.pages
    assert manifest["bytes"] == sum(
        stat.st_size
        for path, stat in files_of(dest).items()
        if path not in METADATA_FILES and not path.endswith(".gz")
    )
    assert manifest["compressed_bytes"] == sum(
        stat.st_size for path, stat in files_of(dest).items() if path.endswith(".gz")
    )
    assert manifest["built_at"].endswith("+00:00")


def test_the_live_build_does_not_change_until_commit(app, dest):
    """A request served during a freeze sees the old build whole, then the new one whole."""
    freeze(app, dest)
    before = versions(dest)
    old_feed = (dest / "episodes/rss.xml").open("rb")
    execute(app, "UPDATE episodes SET title = %s WHERE number = 3", ("Changed while serving",))
    with SiteBuild(app, dest) as build:
        for page in build.pending:
            build.render(page)
        assert versions(dest) == before
        build.commit()
    assert versions(dest) != before
    assert b"Changed while serving" not in old_feed.read()  # an open file keeps its bytes
    old_feed.close()
    assert_matches_live(dest, app)


def test_cli_freezes_into_freeze_dir_with_a_summary(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["freeze"])
    assert result.exit_code == 0, result.output
    assert f"Froze {SMALL_SEED + 6} pages" in result.output and "pages/s" in result.output
    assert "MB gzipped" in result.output
    dest = Path(app.config["FREEZE_DIR"])
    assert dest.is_symlink()
    assert_matches_live(dest, app)

    execute(app, "UPDATE episodes SET title = %s WHERE number = 4", ("Edited",))
    result = runner.invoke(args=["freeze", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert "rendered 3 " in result.output
    assert "written  episodes/rss.xml.gz" in result.output
    assert "Nothing changed" in runner.invoke(args=["freeze"]).output


def freeze_while_editing(app: Flask, monkeypatch: pytest.MonkeyPatch, builds: int):
    """``flask freeze`` after a first build and a published edit, with an edit of episode 4
    committed while each of the next ``builds`` builds renders (after it read the data), from
    a connection of its own, as an editor publishing meanwhile. The CLI runner and result."""
    runner = app.test_cli_runner()
    assert runner.invoke(args=["freeze"]).exit_code == 0
    execute(app, "UPDATE episodes SET title = %s WHERE number = 4", ("Published",))
    render, edits = SiteBuild.render, iter(range(builds))

    def render_then_edit(build: SiteBuild, page) -> None:
        render(build, page)
        if not getattr(build, "edited", False):
            build.edited = True  # type: ignore[attr-defined]
            if (edit := next(edits, None)) is not None:
                execute(app, "UPDATE episodes SET title = %s WHERE number = 4", (f"Edit {edit}",))

    monkeypatch.setattr(SiteBuild, "render", render_then_edit)
    result = runner.invoke(args=["freeze"])
    assert result.exit_code == 0, result.output
    return runner, result


def test_cli_builds_again_when_the_data_changes_during_a_build(app, monkeypatch):
    """systemd's `start` of podcast-freeze, while a freeze runs, joins that run: an edit
    committed after the build read the data must not wait for the next publish."""
    runner, result = freeze_while_editing(app, monkeypatch, builds=1)
    assert result.output.count("Froze ") == 2, result.output
    assert "The data changed while the build ran: building again" in result.output
    dest = Path(app.config["FREEZE_DIR"])
    assert b"Edit 0" in (dest / "episodes" / "rss.xml").read_bytes()
    assert_matches_live(dest, app)
    assert "Nothing changed" in runner.invoke(args=["freeze"]).output


def test_cli_builds_a_bounded_number_of_times_while_the_data_keeps_changing(app, monkeypatch):
    _, result = freeze_while_editing(app, monkeypatch, builds=100)
    assert result.output.count("Froze ") == MAX_BUILDS, result.output
    assert f"still changing: {MAX_BUILDS} builds ran, the last is live" in result.output


def test_scripts_freeze_is_an_executable_bash_script():
    script = Path(__file__).resolve().parent.parent / "scripts" / "freeze"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert 'flask --app webapp freeze "$@"' in script.read_text()
