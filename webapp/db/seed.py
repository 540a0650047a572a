"""Deterministic, realistic sample data: a developer podcast that started in 2015.

The same ``episodes`` count always produces the same rows, so seeding is
idempotent (existing episodes are left alone) and tests can rely on content::

    with database.session() as session:
        inserted = seed(session, episodes=600)
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html import escape

from ..models import slugify, sqlite_timestamp
from .backends import Session
from .queries import merge_search_index, site_state

FIRST_EPISODE_AT = datetime(2015, 1, 5, 14, 0, tzinfo=UTC)
AUDIO_BASE_URL = "https://media.example.com/audio"
AUDIO_BITRATE_BYTES_PER_SECOND = 128_000 // 8

TOPICS = [
    ("Async Python", "asyncio", "event loops"),
    ("Flask", "Werkzeug", "blueprints"),
    ("uWSGI", "pre-forking", "worker recycling"),
    ("nginx", "reverse proxies", "static files"),
    ("PostgreSQL", "indexes", "query plans"),
    ("SQLite", "embedded databases", "WAL mode"),
    ("Profiling", "flame graphs", "statistical sampling"),
    ("Caching", "HTTP validators", "CDNs"),
    ("Type Hints", "mypy", "gradual typing"),
    ("Packaging", "wheels", "pyproject.toml"),
    ("Testing", "pytest fixtures", "property-based testing"),
    ("Data Science", "pandas", "notebooks"),
    ("Machine Learning", "model serving", "feature stores"),
    ("Security", "secrets management", "threat models"),
    ("Observability", "structured logging", "tracing"),
    ("Concurrency", "the GIL", "free-threading"),
    ("Web APIs", "pagination", "rate limiting"),
    ("Django", "the ORM", "migrations"),
    ("Deployment", "systemd", "zero-downtime reloads"),
    ("Memory", "copy-on-write", "the garbage collector"),
    ("Open Source", "maintainers", "governance"),
    ("Education", "teaching Python", "first programs"),
    ("CPython Internals", "the bytecode", "the specializing interpreter"),
    ("Search", "full-text indexes", "ranking"),
    ("Feeds", "RSS", "podcast apps"),
    ("Command-line Tools", "click", "rich terminals"),
    ("Performance", "benchmarks", "load testing"),
    ("Rust and Python", "PyO3", "native extensions"),
]
ANGLES = [
    "in Production",
    "from Scratch",
    "at Scale",
    "the Hard Parts",
    "for Beginners",
    "Done Right",
    "Myths and Facts",
    "Lessons Learned",
    "in 2025 and Beyond",
    "Under the Hood",
]
FIRST_NAMES = [
    "Ada",
    "Ben",
    "Carmen",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kavya",
    "Luis",
    "Mei",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tamsin",
]
LAST_NAMES = [
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Kowalski",
    "Haddad",
    "Fernandes",
    "Novak",
    "Achebe",
    "Brennan",
]
SENTENCES = [
    "We start with how {a} changed the way {guest} thinks about {b}.",
    "{guest} walks us through a real outage caused by {b}, and what the fix taught the team.",
    "Why does {a} matter for a small team? The answer involves {c} more than you might expect.",
    "We measure before we tune: a baseline, one change, and a second measurement.",
    "Halfway through, the conversation turns to {c} and the trade-offs nobody writes down.",
    "{guest} shares the three questions to ask before adopting {a} in an existing codebase.",
    "The numbers surprised us: {b} was not the bottleneck, {c} was.",
    "We close with tools, books and talks that shaped how {guest} works with {a}.",
    "A listener asked whether {b} is worth it for a side project; we give an honest answer.",
    "There is a difference between fast code and a fast site, and {c} sits right between them.",
]
#: The show began marking chapters with this episode; older ones have none.
FIRST_EPISODE_WITH_CHAPTERS = 10
#: The parts of an episode, in order; the first and the last are in every one.
CHAPTER_TITLES = [
    "Welcome, and meet {guest}",
    "How {guest} came to {a}",
    "{a}: the short version",
    "{b} in practice",
    "Then, {c}",
    "A listener question",
    "Picks of the week",
]
LINK_SITES = [
    "docs.python.org",
    "peps.python.org",
    "github.com",
    "pypi.org",
    "lwn.net",
    "speakerdeck.com",
]


def guests_pool() -> list[tuple[str, str, str]]:
    """Every possible guest as (slug, name, bio), in a fixed order."""
    pool = []
    for last in LAST_NAMES:
        for first in FIRST_NAMES:
            name = f"{first} {last}"
            pool.append((slugify(name), name, f"{name} builds and maintains Python systems."))
    return pool


def generate_episode(number: int) -> dict:
    """Episode ``number``'s fields, the same on every call."""
    rng = random.Random(f"episode-{number}")
    topic, b, c = TOPICS[rng.randrange(len(TOPICS))]
    pool = guests_pool()
    guests = rng.sample(pool, 2 if rng.random() < 0.3 else 1)
    lead_guest = guests[0][1]
    title = f"{topic} {ANGLES[rng.randrange(len(ANGLES))]} with {lead_guest}"
    fill = {"a": topic, "b": b, "c": c, "guest": lead_guest}

    def paragraph(count: int) -> str:
        return " ".join(
            SENTENCES[rng.randrange(len(SENTENCES))].format(**fill) for _ in range(count)
        )

    summary = paragraph(2)
    paragraphs = [paragraph(rng.randint(2, 4)) for _ in range(rng.randint(2, 3))]
    links = []
    for index in range(rng.randint(3, 6)):
        site = LINK_SITES[rng.randrange(len(LINK_SITES))]
        path = f"{slugify(topic)}/{slugify(b)}-{number}-{index}"
        links.append(
            f'<li><a href="https://{site}/{path}">{escape(b.capitalize())} on {site}</a></li>'
        )
    show_notes = (
        "".join(f"<p>{escape(text)}</p>" for text in paragraphs)
        + f"<h3>Links from the show</h3><ul>{''.join(links)}</ul>"
        + f"<p>Guest: <strong>{escape(', '.join(g[1] for g in guests))}</strong>.</p>"
    )
    duration = rng.randint(25 * 60, 75 * 60)
    published_at = FIRST_EPISODE_AT + timedelta(weeks=number - 1)
    audio_bytes = duration * AUDIO_BITRATE_BYTES_PER_SECOND + rng.randint(0, 99_999)
    return {
        "number": number,
        # Feed readers de-duplicate by guid: made once, never derived from the URL.
        "guid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:fast-flask-podcast:episode:{number}")),
        "slug": slugify(title),
        "title": title,
        "summary": summary,
        "show_notes": show_notes,
        "transcript": paragraph(3),
        "audio_url": f"{AUDIO_BASE_URL}/{number:04d}-{slugify(topic)}.mp3",
        "audio_bytes": audio_bytes,
        "duration_seconds": duration,
        "explicit": False,
        "published_at": published_at,
        "updated_at": published_at,
        "guests": [slug for slug, _, _ in guests],
        # Drawn last, so the fields above are what they were before chapters existed.
        "chapters": _chapters(rng, duration, fill) if number >= FIRST_EPISODE_WITH_CHAPTERS else [],
    }


def chapters_json(chapters: list[tuple[int, str]]) -> str:
    """How the database holds an episode's chapters: the JSON chapters format's array."""
    return json.dumps([{"startTime": start, "title": title} for start, title in chapters])


def _chapters(rng: random.Random, duration: int, fill: dict[str, str]) -> list[tuple[int, str]]:
    """(start second, title) of each chapter: the welcome at 0, then a few parts, picks last."""
    middle = sorted(rng.sample(range(1, len(CHAPTER_TITLES) - 1), rng.randint(2, 4)))
    titles = [CHAPTER_TITLES[i] for i in [0, *middle, len(CHAPTER_TITLES) - 1]]
    # Starts spread over the episode, at least a minute apart, the picks in its last tenth.
    starts = [0, *sorted(rng.sample(range(60, duration * 9 // 10, 60), len(titles) - 2))]
    starts.append(duration * 9 // 10 + rng.randint(0, duration // 20))
    titles = [title.format(**fill) for title in titles]
    return [
        (start, title[0].upper() + title[1:]) for start, title in zip(starts, titles, strict=True)
    ]


def _chunks(numbers: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(numbers), size):
        yield numbers[start : start + size]


def seed(session: Session, episodes: int, progress: Callable[[int], None] | None = None) -> int:
    """Insert episodes 1..``episodes`` that are missing; returns how many were inserted."""
    sqlite = session.database.dialect == "sqlite"

    def timestamp(value: datetime) -> datetime | str:
        return sqlite_timestamp(value) if sqlite else value

    session.execute_many(
        "INSERT INTO guests (slug, name, bio) VALUES (%s, %s, %s) ON CONFLICT (slug) DO NOTHING",
        guests_pool(),
    )
    guest_ids = {row["slug"]: row["id"] for row in session.fetch_all("SELECT id, slug FROM guests")}
    inserted = 0
    for numbers in _chunks(list(range(1, episodes + 1)), 100):
        generated = [generate_episode(number) for number in numbers]
        before = site_state(session).episode_count
        session.execute_many(
            "INSERT INTO episodes (number, guid, slug, title, summary, show_notes, transcript,"
            " audio_url, audio_bytes, duration_seconds, explicit, published_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (number) DO NOTHING",
            [
                (
                    e["number"],
                    e["guid"],
                    e["slug"],
                    e["title"],
                    e["summary"],
                    e["show_notes"],
                    e["transcript"],
                    e["audio_url"],
                    e["audio_bytes"],
                    e["duration_seconds"],
                    e["explicit"],
                    timestamp(e["published_at"]),
                    timestamp(e["updated_at"]),
                )
                for e in generated
            ],
        )
        after = site_state(session).episode_count
        inserted += after - before
        placeholders = ", ".join(["%s"] * len(numbers))
        episode_ids = {
            row["number"]: row["id"]
            for row in session.fetch_all(
                f"SELECT id, number FROM episodes WHERE number IN ({placeholders})", numbers
            )
        }
        session.execute_many(
            "INSERT INTO episode_guests (episode_id, position, guest_id) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [
                (episode_ids[e["number"]], position, guest_ids[slug])
                for e in generated
                for position, slug in enumerate(e["guests"])
            ],
        )
        session.execute_many(
            "INSERT INTO episode_chapters (episode_id, chapters) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            [
                (episode_ids[e["number"]], chapters_json(e["chapters"]))
                for e in generated
                if e["chapters"]
            ],
        )
        if progress is not None:
            progress(len(numbers))
    if inserted:
        merge_search_index(session)
    return inserted
