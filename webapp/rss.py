"""The podcast RSS 2.0 feed, written directly as text.

A general-purpose feed library builds an element tree and serialises it;
this writes each item with one format string, which is what makes a cold
build of a 600-episode feed several times cheaper (see
tests/benchmarks/test_feed_bench.py). The output follows Apple Podcasts'
requirements: the itunes namespace, ``itunes:explicit`` as true/false,
durations in seconds, an enclosure with length and type, a stable guid.

    body = render_feed(episodes, FeedChannel.from_config(app.config), updated_at)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from html import escape
from typing import Any

from .models import Episode

CONTENT_TYPE = "application/rss+xml; charset=utf-8"
#: Bump when the feed's format changes: it is part of the ETag.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeedChannel:
    """The show-level facts of the feed."""

    site_url: str
    title: str
    author: str
    owner_email: str
    language: str
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
        )


def rfc2822(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def render_feed(episodes: Sequence[Episode], channel: FeedChannel, updated_at: datetime) -> bytes:
    """The whole feed as UTF-8 bytes; ``episodes`` newest first."""
    before, after = feed_frame(channel, updated_at)
    return f"{before}{''.join(feed_items(episodes, channel))}{after}".encode()


def feed_frame(channel: FeedChannel, updated_at: datetime) -> tuple[str, str]:
    """The feed around its items: the channel before them, the closing tags after.

    The freezer composes the feed from this and items it kept from the last
    build (see webapp.freeze.site.Listing), so ``render_feed`` is made of
    nothing else.
    """
    site = escape(channel.site_url)
    title = escape(channel.title)
    author = escape(channel.author)
    before = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"'
        ' xmlns:atom="http://www.w3.org/2005/Atom">\n<channel>\n'
        f"<title>{title}</title>\n<link>{site}/</link>\n"
        f"<description>{escape(channel.description)}</description>\n"
        f"<language>{escape(channel.language)}</language>\n"
        f'<atom:link href="{site}/episodes/rss" rel="self" type="application/rss+xml"/>\n'
        f"<lastBuildDate>{rfc2822(updated_at)}</lastBuildDate>\n"
        f"<copyright>© {author}</copyright>\n"
        f"<image><url>{site}/static/cover.png</url><title>{title}</title><link>{site}/</link></image>\n"
        f'<itunes:image href="{site}/static/cover.png"/>\n'
        f'<itunes:category text="{escape(channel.category)}"/>\n'
        "<itunes:explicit>false</itunes:explicit>\n<itunes:type>episodic</itunes:type>\n"
        f"<itunes:author>{author}</itunes:author>\n"
        f"<itunes:owner><itunes:name>{author}</itunes:name>"
        f"<itunes:email>{escape(channel.owner_email)}</itunes:email></itunes:owner>\n"
    )
    return before, "</channel>\n</rss>\n"


def feed_items(episodes: Sequence[Episode], channel: FeedChannel) -> list[str]:
    """One ``<item>`` per episode, in the order given."""
    site = escape(channel.site_url)
    return [_item(episode, site) for episode in episodes]


def _item(episode: Episode, site: str) -> str:
    return (
        f"<item>\n<title>{escape(episode.title)}</title>\n"
        f"<link>{site}{escape(episode.path)}</link>\n"
        f'<guid isPermaLink="false">{escape(episode.guid)}</guid>\n'
        f"<pubDate>{rfc2822(episode.published_at)}</pubDate>\n"
        f'<enclosure url="{escape(episode.audio_url)}" length="{episode.audio_bytes}" type="audio/mpeg"/>\n'
        f"<itunes:duration>{episode.duration_seconds}</itunes:duration>\n"
        f"<itunes:episode>{episode.number}</itunes:episode>\n"
        "<itunes:episodeType>full</itunes:episodeType>\n"
        f"<itunes:explicit>{'true' if episode.explicit else 'false'}</itunes:explicit>\n"
        f"<description>{escape(episode.show_notes)}</description>\n</item>\n"
    )
