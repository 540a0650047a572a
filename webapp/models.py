"""The site's data, as plain immutable records built from database rows."""

from __future__ import annotations

import functools
import json
import math
import re
import reprlib
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple


def slugify(text: str) -> str:
    """``"Async Python: A Tour!"`` -> ``"async-python-a-tour"``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "episode"


def as_utc(value: datetime | str) -> datetime:
    """A timezone-aware UTC datetime from either backend's representation.

    PostgreSQL returns aware datetimes; SQLite stores naive UTC ISO text.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """How SQLite stores a timestamp: naive UTC, sortable as text."""
    return as_utc(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


#: Episode numbers are PostgreSQL INTEGERs; a larger number in a URL is a 404,
#: not an overflow in the driver.
MAX_EPISODE_NUMBER = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Guest:
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class Chapter:
    """A chapter marker: where a part of the episode starts, and what it is about."""

    start_seconds: int
    title: str

    @property
    def start_display(self) -> str:
        """``3725`` seconds -> ``"1:02:05"``."""
        return clock_time(self.start_seconds)


#: The URL of an episode's page: the route (webapp.blueprints.pages) is declared
#: from it, and every link is formatted from it (``url_for`` costs more per link,
#: and a listing has thousands).
EPISODE_URL = "/episodes/{number}/{slug}"


def episode_path(number: int, slug: str) -> str:
    """``/episodes/5/a-slug``: the canonical URL path of an episode's page."""
    return EPISODE_URL.format(number=number, slug=slug)


def episode_routes() -> tuple[str, str]:
    """An episode page's routes: the canonical one, and the number alone (which redirects)."""
    number = f"<int(max={MAX_EPISODE_NUMBER}):number>"
    canonical = EPISODE_URL.format(number=number, slug="<slug>")
    return canonical, canonical.rpartition("/")[0]


class _Listed:
    """What every list of episodes shows of one: its link and its duration."""

    __slots__ = ()
    number: int
    slug: str
    duration_seconds: int

    @property
    def path(self) -> str:
        """The canonical URL path of the episode's page."""
        return episode_path(self.number, self.slug)

    @property
    def duration_display(self) -> str:
        """``3725`` seconds -> ``"1:02:05"``."""
        return clock_time(self.duration_seconds)


@dataclass(frozen=True, slots=True)
class Episode(_Listed):
    id: int
    number: int
    guid: str
    slug: str
    title: str
    summary: str
    show_notes: str
    transcript: str
    audio_url: str
    audio_bytes: int
    duration_seconds: int
    explicit: bool
    published_at: datetime
    updated_at: datetime
    guests: tuple[Guest, ...] = field(default=())
    #: The chapters as stored: a JSON array in the JSON chapters format, or None.
    chapters_json: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], guests: tuple[Guest, ...] = ()) -> Episode:
        return cls(**_values_of_row(row, cls), guests=guests)

    @property
    def has_transcript(self) -> bool:
        return bool(self.transcript)

    @property
    def has_chapters(self) -> bool:
        return self.chapters_json is not None

    @property
    def chapters(self) -> tuple[Chapter, ...]:
        """The chapter markers, in order (parsed on each call: an episode page shows them)."""
        if self.chapters_json is None:
            return ()
        return parse_chapters(self.number, self.chapters_json)


class BadChapters(ValueError):
    """An episode's chapters are not in the JSON chapters format: which, and what is wrong."""


def parse_chapters(number: int, chapters_json: str) -> tuple[Chapter, ...]:
    """Episode ``number``'s chapter markers from its JSON array; BadChapters if one is not
    a chapter of the JSON chapters format.

    The schema checks only that the column holds a JSON array: whatever the editors' tool
    wrote in it reaches this, and a KeyError or a TypeError would name neither the episode
    nor the column. As the format has it, ``title`` is optional and ``startTime`` a number
    of seconds (a float too: shown to the second).
    """
    chapters = []
    for position, chapter in enumerate(json.loads(chapters_json), start=1):
        given = chapter if isinstance(chapter, dict) else {}  # not an object: no startTime
        start, title = given.get("startTime"), given.get("title", "")
        if (
            not isinstance(start, int | float)
            or isinstance(start, bool)
            or not math.isfinite(start)
            or start < 0
            or not isinstance(title, str)
        ):
            raise BadChapters(
                f"episode_chapters.chapters of episode {number} holds"
                f" {reprlib.repr(chapter)} as chapter {position}: each is an object with a"
                " startTime (seconds, a number at least 0) and, if any, a title (a string),"
                " as the JSON chapters format has it"
            )
        chapters.append(Chapter(int(start), title))
    return tuple(chapters)


@dataclass(frozen=True, slots=True)
class EpisodeItem(_Listed):
    """An episode as lists show it (an ``<li>`` of the catalogue, the home page, search
    results, the API's list): without the show notes, the transcript and the chapters,
    which only its page shows; whether it has a transcript and chapters, which the API's
    list links."""

    id: int
    number: int
    slug: str
    title: str
    summary: str
    audio_url: str
    audio_bytes: int
    duration_seconds: int
    published_at: datetime
    has_transcript: bool
    has_chapters: bool
    guests: tuple[Guest, ...] = field(default=())

    @classmethod
    def from_row(cls, row: dict[str, Any], guests: tuple[Guest, ...] = ()) -> EpisodeItem:
        return cls(**_values_of_row(row, cls), guests=guests)


#: Fields of a record that no column of its row holds: what it is read with besides.
RELATED_FIELDS = frozenset({"guests"})
#: Fields SQLite returns as 0 or 1.
BOOLEAN_FIELDS = frozenset({"explicit", "has_transcript", "has_chapters"})


@functools.cache
def _column_names(record: type) -> tuple[str, ...]:
    return tuple(column.name for column in fields(record) if column.name not in RELATED_FIELDS)


def _values_of_row(row: dict[str, Any], record: type) -> dict[str, Any]:
    """``row``'s values for the fields of dataclass ``record``, as Python types (either
    backend's timestamps, SQLite's 0/1 for booleans)."""
    values = {name: row[name] for name in _column_names(record)}
    for name in ("published_at", "updated_at"):
        if name in values:
            values[name] = as_utc(values[name])
    for name in BOOLEAN_FIELDS.intersection(values):
        values[name] = bool(values[name])
    return values


def clock_time(seconds: int) -> str:
    """``3725`` -> ``"1:02:05"``, ``65`` -> ``"1:05"``."""
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class EpisodeRevision(NamedTuple):
    """Which episode, in which revision: what lists and builds read of every episode they show.

    A tuple: lists make one per row, and a frozen dataclass costs several times more to make.
    """

    number: int
    slug: str
    #: drawn anew at each change of the episode (see episode_revisions); None
    #: for an episode written while the triggers were off
    revision: int | None

    @property
    def path(self) -> str:
        return episode_path(self.number, self.slug)


@dataclass(frozen=True, slots=True)
class SiteState:
    """What changes whenever published data changes (see site_state in the schema)."""

    version: int
    changed_at: datetime
    episode_count: int


@dataclass(frozen=True, slots=True)
class EpisodePage:
    """One page of the API's episode list: which episodes, in which revision."""

    entries: list[EpisodeRevision]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))
