"""The podcast RSS 2.0 feed, written directly as text.

A general-purpose feed library builds an element tree and serialises it;
this writes each item with one format string, which is what makes a cold
build of a 600-episode feed several times cheaper (see
tests/benchmarks/test_feed_bench.py). The output follows Apple Podcasts'
requirements (the itunes namespace, ``itunes:explicit`` as true/false,
durations in seconds, an enclosure with length and type, a stable guid, show
notes in CDATA with Apple's tags only) and the Podcast Namespace 1.0
(``podcast:guid``, ``podcast:locked``, ``podcast:person``,
``podcast:transcript``, ``podcast:chapters``).

    body = render_feed(episodes, FeedChannel.from_config(app.config), updated_at)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from html import escape
from typing import Any

import nh3

from .models import Episode

CONTENT_TYPE = "application/rss+xml; charset=utf-8"
#: When the feed's format last changed: its Last-Modified is never earlier, so a
#: new format reaches the apps that hold the old one (move it with every change).
FORMAT_CHANGED_AT = datetime(2026, 11, 30, tzinfo=UTC)
#: How long an app may keep the feed before asking again (RSS <ttl>; Cache-Control says
#: the same): a weekly show loses at most an hour, and apps poll hourly anyway.
POLL_MINUTES = 60
#: The feed's gzip is deflated in chunks, one starting at each episode whose
#: number is a multiple of this (see webapp.freeze.chunked_gzip): the app and
#: the freezer make the same bytes, so nginx's file and the app agree on ETags.
GZIP_CHUNK_EVERY = 32
#: What the site serves for each episode besides its page (see blueprints/podcast.py).
TRANSCRIPT_PATH = "/episodes/{number}/transcript.html"
CHAPTERS_PATH = "/episodes/{number}/chapters.json"
ARTWORK_PATH = "/artwork.png"

#: Apple Podcasts shows these tags of a description, and asks for no others.
APPLE_TAGS = {"p", "ol", "ul", "li", "a"}
_HEADING = re.compile(r"<(/?)h[1-6]\b", re.IGNORECASE)
_APPLE_CLEANER = nh3.Cleaner(
    tags=APPLE_TAGS,
    attributes={"a": {"href"}},
    url_schemes={"http", "https", "mailto"},
    link_rel=None,
    strip_comments=True,
)
#: What XML 1.0 forbids in a document, escaped or not (its Char production): the
#: C0 controls but tab, newline and carriage return, U+FFFE, U+FFFF, and lone
#: surrogates. One in any item makes the whole feed not well-formed, and podcast
#: apps then drop every episode; a vertical tab (a word processor's line break,
#: pasted in) is the usual one. Each becomes a space: they separate words.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class FeedChannel:
    """The show-level facts of the feed."""

    site_url: str
    title: str
    author: str
    owner_email: str
    language: str
    host: str
    podcast_guid: str
    description: str = "Conversations about making Python web applications fast, and proving it."
    category: str = "Technology"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeedChannel:
        return cls(
            site_url=config["SITE_URL"],
            title=config["SITE_TITLE"],
            author=config["SITE_AUTHOR"],
            owner_email=config["SITE_OWNER_EMAIL"],
            language=config["SITE_LANGUAGE"],
            host=config["SITE_HOST"],
            podcast_guid=config["SITE_PODCAST_GUID"],
        )


def rfc2822(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def modified_at(changed_at: datetime) -> datetime:
    """The feed's Last-Modified for data last changed at ``changed_at``, to the second (as HTTP).

    The freezer gives the feed's file this modification time, so nginx's
    validators for the file are the app's (see blueprints/feed.py).
    """
    return max(changed_at, FORMAT_CHANGED_AT).replace(microsecond=0)


def render_feed(episodes: Sequence[Episode], channel: FeedChannel, updated_at: datetime) -> bytes:
    """The whole feed as UTF-8 bytes; ``episodes`` newest first."""
    before, after = feed_frame(channel, updated_at)
    return f"{before}{''.join(feed_items(episodes, channel))}{after}".encode()


def feed_frame(channel: FeedChannel, updated_at: datetime) -> tuple[str, str]:
    """The feed around its items: the channel before them, the closing tags after.

    The view and the freezer compose the feed from this and its items (the
    freezer keeps them from build to build: see FEED in blueprints/feed.py),
    so ``render_feed`` is made of nothing else.
    """
    site = escape(channel.site_url)
    title = escape(channel.title)
    author = escape(channel.author)
    owner = escape(channel.owner_email)
    artwork = f"{site}{ARTWORK_PATH}"
    before = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"'
        ' xmlns:atom="http://www.w3.org/2005/Atom"'
        ' xmlns:podcast="https://podcastindex.org/namespace/1.0">\n<channel>\n'
        f"<title>{title}</title>\n<link>{site}/</link>\n"
        f"<description>{escape(channel.description)}</description>\n"
        f"<language>{escape(channel.language)}</language>\n"
        f'<atom:link href="{site}/episodes/rss" rel="self" type="application/rss+xml"/>\n'
        f"<lastBuildDate>{rfc2822(modified_at(updated_at))}</lastBuildDate>\n"
        f"<ttl>{POLL_MINUTES}</ttl>\n"
        f"<copyright>© {author}</copyright>\n"
        f"<image><url>{artwork}</url><title>{title}</title><link>{site}/</link></image>\n"
        f'<itunes:image href="{artwork}"/>\n'
        f'<itunes:category text="{escape(channel.category)}"/>\n'
        "<itunes:explicit>false</itunes:explicit>\n<itunes:type>episodic</itunes:type>\n"
        f"<itunes:author>{author}</itunes:author>\n"
        f"<itunes:owner><itunes:name>{author}</itunes:name>"
        f"<itunes:email>{owner}</itunes:email></itunes:owner>\n"
        f"<podcast:guid>{escape(channel.podcast_guid)}</podcast:guid>\n"
        # No other host may import the feed; the owner's address proves a move is theirs.
        f'<podcast:locked owner="{owner}">yes</podcast:locked>\n'
        f"{_host(channel)}\n"
    )
    return before, "</channel>\n</rss>\n"


def feed_items(episodes: Sequence[Episode], channel: FeedChannel) -> list[str]:
    """One ``<item>`` per episode, in the order given: the whole feed's (see feed_show_notes)."""
    site = escape(channel.site_url)
    host = _host(channel)
    notes = feed_show_notes(episodes)
    return [_item(episode, site, host, text) for episode, text in zip(episodes, notes, strict=True)]


class _LastFeedNotes:
    """The show notes of the last feed this process rendered: as written, and cleaned."""

    cleaned: dict[str, str] = {}


def feed_show_notes(episodes: Sequence[Episode]) -> list[str]:
    """Each episode's show notes as :func:`apple_show_notes` cleans them, for one whole feed.

    The feed is rendered whole again after every change of the data, when only the edited
    episodes' notes differ, so the last feed's notes are kept cleaned and only the others
    are cleaned here. Then this feed's replace them: a process holds one feed's notes, never
    a version an edit replaced, however long it lives and however often editors save.
    ``episodes`` are the whole feed: given fewer, the next feed cleans the rest again.
    """
    kept = _LastFeedNotes.cleaned
    cleaned: dict[str, str] = {}
    texts = []
    for episode in episodes:
        html = episode.show_notes
        text = cleaned.get(html)
        if text is None:
            text = kept.get(html)
            if text is None:
                text = apple_show_notes(html)
            cleaned[html] = text
        texts.append(text)
    # One assignment: a thread rendering another feed meanwhile reads either whole dict.
    _LastFeedNotes.cleaned = cleaned
    return texts


def _host(channel: FeedChannel) -> str:
    return f'<podcast:person role="host">{escape(channel.host)}</podcast:person>'


def _xml_text(value: str) -> str:
    """``value`` escaped for XML text or an attribute value, without what XML forbids."""
    # isprintable() is false for every character _NOT_XML matches, and runs in C: most
    # values skip the regular expression, which would scan the feed several times slower.
    return escape(value if value.isprintable() else _NOT_XML.sub(" ", value))


def _item(episode: Episode, site: str, host: str, show_notes: str) -> str:
    title = _xml_text(episode.title)
    # An item's people replace the channel's: the host is named again beside the guests.
    people = "".join(
        f'<podcast:person role="guest">{_xml_text(guest.name)}</podcast:person>\n'
        for guest in episode.guests
    )
    transcript = (
        f'<podcast:transcript url="{site}{TRANSCRIPT_PATH.format(number=episode.number)}"'
        ' type="text/html"/>\n'
        if episode.transcript
        else ""
    )
    chapters = (
        f'<podcast:chapters url="{site}{CHAPTERS_PATH.format(number=episode.number)}"'
        ' type="application/json+chapters"/>\n'
        if episode.chapters_json is not None
        else ""
    )
    return (
        f"<item>\n<title>{title}</title>\n<itunes:title>{title}</itunes:title>\n"
        f"<link>{site}{_xml_text(episode.path)}</link>\n"
        f'<guid isPermaLink="false">{_xml_text(episode.guid)}</guid>\n'
        f"<pubDate>{rfc2822(episode.published_at)}</pubDate>\n"
        f'<enclosure url="{_xml_text(episode.audio_url)}" length="{episode.audio_bytes}"'
        ' type="audio/mpeg"/>\n'
        f"<itunes:duration>{episode.duration_seconds}</itunes:duration>\n"
        f"<itunes:episode>{episode.number}</itunes:episode>\n"
        "<itunes:episodeType>full</itunes:episodeType>\n"
        f"<itunes:explicit>{'true' if episode.explicit else 'false'}</itunes:explicit>\n"
        f"<description><![CDATA[{show_notes}]]></description>\n"
        f"{host}\n{people}{transcript}{chapters}</item>\n"
    )


def apple_show_notes(html: str) -> str:
    """Show notes as Apple Podcasts displays them: p, ol, ul, li and a (href) only.

    Headings become paragraphs, other tags give way to their text, scripts and
    comments go. nh3 (the Ammonia sanitizer) parses the HTML as a browser
    would, so what editors wrote, however broken, comes out well-formed; it
    escapes ``>`` in text, so the result cannot close the CDATA section around
    it. Not cached: :func:`feed_show_notes` keeps what a feed cleaned for the next.
    """
    return _NOT_XML.sub(" ", _APPLE_CLEANER.clean(_HEADING.sub(r"<\1p", html)))
