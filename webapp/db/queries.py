"""Every query the site runs, each written once for both backends.

Each function takes a :class:`~webapp.db.backends.Session`. The indexes each
query relies on are named beside it; ``tests/test_query_plans.py`` runs every
query here through EXPLAIN on both backends and fails on a table scan.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import defaultdict
from collections.abc import Iterable

from ..models import Episode, EpisodeItem, EpisodePage, EpisodeRevision, Guest, SiteState, as_utc
from .backends import Session

#: All of an episode but its guests: its chapters too, a primary-key lookup per episode.
EPISODE_COLUMNS = (
    "e.id, e.number, e.guid, e.slug, e.title, e.summary, e.show_notes, e.transcript, e.audio_url,"
    " e.audio_bytes, e.duration_seconds, e.explicit, e.published_at, e.updated_at,"
    " (SELECT c.chapters FROM episode_chapters c WHERE c.episode_id = e.id) AS chapters_json"
)
#: What lists show of an episode (EpisodeItem): not the show notes, transcript or chapters,
#: only whether it has the last two (its chapters: a primary-key lookup).
ITEM_COLUMNS = (
    "e.id, e.number, e.slug, e.title, e.summary, e.audio_url, e.audio_bytes, e.duration_seconds,"
    " e.published_at, e.transcript <> '' AS has_transcript,"
    " EXISTS (SELECT 1 FROM episode_chapters c WHERE c.episode_id = e.id) AS has_chapters"
)
#: An episode's number, slug and revision (EpisodeRevision). A LEFT JOIN: an
#: episode without a revision (written with the triggers off) must show as
#: one, not vanish. The revision is a primary-key lookup.
REVISION_FROM = (
    "SELECT e.number, e.slug, r.revision FROM episodes e"
    " LEFT JOIN episode_revisions r ON r.episode_id = e.id"
)

#: The order of "latest": index episodes_published_at, read backwards; the
#: number orders ties. The home page and the freezer's view of it share it.
LATEST_FIRST = "ORDER BY e.published_at DESC, e.number DESC"

#: At most this many words of a search are used; the rest is ignored.
MAX_SEARCH_TERMS = 12


def site_state(session: Session) -> SiteState:
    # Primary key lookup on a one-row table.
    row = session.fetch_one(
        "SELECT version, changed_at, episode_count FROM site_state WHERE id = 1"
    )
    if row is None:  # a schema from before site_state existed, or a wiped row
        return SiteState(version=0, changed_at=as_utc("1970-01-01"), episode_count=0)
    return SiteState(
        version=row["version"],
        changed_at=as_utc(row["changed_at"]),
        episode_count=row["episode_count"],
    )


def latest_revisions(session: Session, limit: int) -> list[EpisodeRevision]:
    """The latest episodes (the home page's), newest first."""
    return _revisions(session.fetch_all(f"{REVISION_FROM} {LATEST_FIRST} LIMIT %s", (limit,)))


def all_episodes(session: Session) -> list[Episode]:
    """Every episode, newest number first: the feed, and the freezer's full builds."""
    # The unique index on number gives the order without a sort.
    rows = session.fetch_all(f"SELECT {EPISODE_COLUMNS} FROM episodes e ORDER BY e.number DESC")
    return _with_related(session, rows, every_episode=True)


def episode_revisions(session: Session) -> list[EpisodeRevision]:
    """Every episode's number, slug and revision, newest number first (lists, builds)."""
    # The unique index on number gives the order.
    return _revisions(session.fetch_all(f"{REVISION_FROM} ORDER BY e.number DESC"))


class UnrevisedEpisodes(ValueError):
    """Episodes without a revision (written while the triggers were off): a build cannot
    tell whether they changed. ``numbers``: the first ten, lowest first."""

    def __init__(self, numbers: list[int]) -> None:
        super().__init__(", ".join(str(number) for number in numbers))
        self.numbers = numbers


class NotInt64(ValueError):
    """Numbers or revisions that are not 64-bit integers, which a build's table holds.

    SQLite keeps whatever a column is given (its tables are not STRICT): a REAL
    (an integer literal beyond 64 bits becomes one), TEXT or a BLOB. ``found``:
    (episode id, column, the value as shown) of the first ten, for the message.
    """

    def __init__(self, found: list[tuple[int, str, str]]) -> None:
        super().__init__(
            "; ".join(
                f"{column} holds {shown} for episode id {episode_id}"
                for episode_id, column, shown in found
            )
            or "none left when looked for: the table changed while read, so build again"
        )
        self.found = found


def episode_table(session: Session) -> tuple[array, array]:
    """Every episode's number and revision, newest number first, as two arrays of int64.

    What a build compares with the last one, at every build, so it costs one
    row, not one per episode: the database joins the numbers and the
    revisions into two strings (one Python object each), which become arrays
    without a row, dict or int object per episode on the way. Not the slug:
    the number's index and the revisions' primary key are enough. Raises
    UnrevisedEpisodes if episodes have no revision (written while the triggers
    were off), and NotInt64 if a number or revision is not a 64-bit integer.
    """
    if session.database.dialect == "postgresql":
        joined = "string_agg({0}::text, ',')"  # bigint columns: nothing else can be in them
    else:
        # SQLite keeps any value in any column (its tables are not STRICT): only integers are
        # joined, so a REAL, TEXT or BLOB leaves a list short, which the count below catches.
        joined = "group_concat(CASE WHEN typeof({0}) = 'integer' THEN {0} END, ',')"
    row = session.fetch_one(
        f"SELECT {joined.format('number')} AS numbers, {joined.format('revision')} AS revisions,"
        " count(*) AS episodes, count(*) - count(revision) AS unrevised"
        " FROM (SELECT e.number, r.revision FROM episodes e"
        " LEFT JOIN episode_revisions r ON r.episode_id = e.id ORDER BY e.number DESC) t"
    )
    assert row is not None  # an aggregate always answers one row
    if row["unrevised"]:
        unrevised = session.fetch_all(
            "SELECT e.number FROM episodes e LEFT JOIN episode_revisions r"
            " ON r.episode_id = e.id WHERE r.revision IS NULL ORDER BY e.number LIMIT 10"
        )
        raise UnrevisedEpisodes([found["number"] for found in unrevised])
    # Parsed as a JSON array: its C parser makes the ints, twice as fast as int() per item.
    numbers = array("q", json.loads(f"[{row['numbers'] or ''}]"))
    revisions = array("q", json.loads(f"[{row['revisions'] or ''}]"))
    if not len(numbers) == len(revisions) == row["episodes"]:
        raise NotInt64(_not_int64(session))
    # An aggregate's order is the subquery's in both databases, though neither promises it
    # (SQLite before 3.44 cannot be told): checked, and put right if it ever is not.
    if list(numbers) != sorted(numbers, reverse=True):
        order = sorted(range(len(numbers)), key=numbers.__getitem__, reverse=True)
        numbers = array("q", (numbers[i] for i in order))
        revisions = array("q", (revisions[i] for i in order))
    return numbers, revisions


def _not_int64(session: Session) -> list[tuple[int, str, str]]:
    """The first ten numbers or revisions that are not integers, with their episode's id and
    the value as the message shows it. SQLite only: PostgreSQL's bigint columns hold nothing
    else. A TEXT is read as its bytes, which may not even be UTF-8 (the driver would raise)."""
    found: list[tuple[int, str, str]] = []
    as_read = "CASE WHEN typeof({0}) IN ('text', 'blob') THEN CAST({0} AS BLOB) ELSE {0} END"
    for row in session.fetch_all(
        f"SELECT e.id, typeof(e.number) AS number_type, {as_read.format('e.number')} AS number,"
        f" typeof(r.revision) AS revision_type, {as_read.format('r.revision')} AS revision"
        " FROM episodes e JOIN episode_revisions r ON r.episode_id = e.id"
        " WHERE typeof(e.number) != 'integer' OR typeof(r.revision) != 'integer'"
        " ORDER BY e.id LIMIT 10"
    ):
        for column, name in (
            ("episodes.number", "number"),
            ("episode_revisions.revision", "revision"),
        ):
            kind, value = row[f"{name}_type"], row[name]
            if kind != "integer":
                if kind == "text":
                    value = value.decode(errors="replace")
                shown = repr(value)
                shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
                found.append((row["id"], column, f"{shown} ({kind.upper()})"))
    return found[:10]


def _revisions(rows: list[dict]) -> list[EpisodeRevision]:
    return [EpisodeRevision(row["number"], row["slug"], row["revision"]) for row in rows]


def episodes_by_number(session: Session, numbers: Iterable[int]) -> list[Episode]:
    """The episodes with these numbers (those that exist), newest number first."""
    return _with_related(session, _rows_by_number(session, numbers, EPISODE_COLUMNS))


def episode_items(session: Session, numbers: Iterable[int]) -> list[EpisodeItem]:
    """What lists show of the episodes with these numbers (those that exist), newest first."""
    rows = _rows_by_number(session, numbers, ITEM_COLUMNS)
    if not rows:
        return []
    guests = _guests_by_episode(session, [row["id"] for row in rows])
    return [EpisodeItem.from_row(row, tuple(guests.get(row["id"], ()))) for row in rows]


def _rows_by_number(session: Session, numbers: Iterable[int], columns: str) -> list[dict]:
    numbers = list(numbers)
    if not numbers:
        return []
    # The unique index on number, once per number.
    return session.fetch_all(
        f"SELECT {columns} FROM episodes e WHERE e.number IN ({_placeholders(numbers)})"
        " ORDER BY e.number DESC",
        numbers,
    )


def episode_page(session: Session, page: int, per_page: int, total: int) -> EpisodePage:
    """A page of the API's list of ``total`` episodes (``site_state``'s count, read by the view)."""
    # The unique index on number, walked from the top. OFFSET costs a walk of
    # the skipped entries; the API caps it at the size of the catalogue.
    rows = session.fetch_all(
        f"{REVISION_FROM} ORDER BY e.number DESC LIMIT %s OFFSET %s",
        (per_page, (page - 1) * per_page),
    )
    return EpisodePage(_revisions(rows), page=page, per_page=per_page, total=total)


def episode_revision(session: Session, number: int) -> EpisodeRevision | None:
    """Which revision the episode with this number is in; None if there is none."""
    # The unique index on number; the revision's primary key.
    rows = session.fetch_all(f"{REVISION_FROM} WHERE e.number = %s", (number,))
    return _revisions(rows)[0] if rows else None


def episode_by_number(session: Session, number: int) -> Episode | None:
    # The unique index on number.
    rows = session.fetch_all(
        f"SELECT {EPISODE_COLUMNS} FROM episodes e WHERE e.number = %s", (number,)
    )
    episodes = _with_related(session, rows)
    return episodes[0] if episodes else None


def search_terms(query: str) -> list[str]:
    """The words of a search box entry; everything else (quotes, operators, NULs) is dropped.

    Passing words, never the raw text, to the full-text engines is what makes
    any input safe: neither FTS5's nor PostgreSQL's query syntax can be reached.
    """
    return re.findall(r"\w+", query.lower())[:MAX_SEARCH_TERMS]


def search(session: Session, query: str, limit: int = 50) -> list[EpisodeRevision]:
    """Episodes matching every word of ``query``, best match first.

    Only what tells a result's fragment apart is read: lists read the rest
    of an episode (``episode_items``) only for fragments they do not hold.
    """
    terms = search_terms(query)
    if not terms:
        return []
    if session.database.dialect == "sqlite":
        # The FTS5 index; bm25 rank is computed inside it.
        rows = session.fetch_all(
            "SELECT e.number, e.slug, r.revision FROM episodes_fts f"
            " JOIN episodes e ON e.id = f.rowid"
            " LEFT JOIN episode_revisions r ON r.episode_id = e.id"
            " WHERE episodes_fts MATCH %s ORDER BY f.rank, e.number DESC LIMIT %s",
            (" ".join(f'"{term}"' for term in terms), limit),
        )
    else:
        # The GIN index episodes_search.
        rows = session.fetch_all(
            f"{REVISION_FROM}, plainto_tsquery('english', %s) q"
            " WHERE e.search_vector @@ q ORDER BY ts_rank(e.search_vector, q) DESC, e.number DESC"
            " LIMIT %s",
            (" ".join(terms), limit),
        )
    return _revisions(rows)


def merge_search_index(session: Session) -> None:
    """Merge SQLite's full-text index into one b-tree, after writes to episodes.

    FTS5 writes each change as a new segment of its index and merges them only
    step by step (its automerge), so an index built episode by episode, or by
    the seed, is read as many segments, and a ranked search walks each one. Its
    'optimize' merges them all. Call it after a batch of writes (the seed does);
    PostgreSQL's GIN index needs nothing.
    """
    if session.database.dialect == "sqlite":
        session.execute("INSERT INTO episodes_fts (episodes_fts) VALUES ('optimize')")


def _with_related(session: Session, rows: list[dict], every_episode: bool = False) -> list[Episode]:
    """The episodes of ``rows`` with their guests (one query, whatever the count)."""
    if not rows:
        return []
    guests = _guests_by_episode(session, None if every_episode else [row["id"] for row in rows])
    return [Episode.from_row(row, tuple(guests.get(row["id"], ()))) for row in rows]


def _guests_by_episode(session: Session, episode_ids: list[int] | None) -> dict[int, list[Guest]]:
    # The primary key (episode_id, position) gives both the lookup and the order;
    # guests are joined by their primary key. None reads every row: the catalogue
    # and the feed want them all.
    sql = (
        "SELECT eg.episode_id, g.slug, g.name FROM episode_guests eg"
        " JOIN guests g ON g.id = eg.guest_id"
    )
    if episode_ids is not None:
        sql += f" WHERE eg.episode_id IN ({_placeholders(episode_ids)})"
    rows = session.fetch_all(sql + " ORDER BY eg.episode_id, eg.position", episode_ids or ())
    guests: dict[int, list[Guest]] = defaultdict(list)
    for row in rows:
        guests[row["episode_id"]].append(Guest(slug=row["slug"], name=row["name"]))
    return guests


def _placeholders(values: list) -> str:
    """``%s, %s, %s`` for an ``IN (...)`` of ``values``."""
    return ", ".join(["%s"] * len(values))
