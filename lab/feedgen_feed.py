"""The site's feed built with feedgen, the general-purpose library, for comparison.

    body = render_with_feedgen(episodes, FeedChannel.from_config(app.config), state.changed_at)

Item for item the feed webapp.rss writes, built the way feedgen's
documentation builds a podcast feed. feedgen is a dev dependency: only the
benchmarks and the tuning lab import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from feedgen.feed import FeedGenerator

from webapp.models import Episode
from webapp.rss import ARTWORK_PATH, FeedChannel, feed_show_notes


def render_with_feedgen(
    episodes: Sequence[Episode], channel: FeedChannel, updated_at: datetime
) -> bytes:
    """The RSS document for ``episodes`` (newest first), as bytes."""
    generator = FeedGenerator()
    generator.load_extension("podcast")
    generator.title(channel.title)
    generator.link(href=f"{channel.site_url}/", rel="alternate")
    generator.link(href=f"{channel.site_url}/episodes/rss", rel="self")
    generator.description(channel.description)
    generator.language(channel.language)
    generator.lastBuildDate(updated_at)
    generator.podcast.itunes_author(channel.author)
    generator.podcast.itunes_category(channel.category)
    generator.podcast.itunes_image(f"{channel.site_url}{ARTWORK_PATH}")
    generator.podcast.itunes_owner(name=channel.author, email=channel.owner_email)
    generator.podcast.itunes_explicit("no")
    # Cleaned as webapp.rss cleans them, with what the last feed cleaned kept.
    notes = feed_show_notes(episodes)
    for episode, show_notes in zip(reversed(episodes), reversed(notes), strict=True):
        entry = generator.add_entry()  # feedgen prepends entries
        entry.guid(episode.guid, permalink=False)
        entry.title(episode.title)
        entry.link(href=channel.site_url + episode.path)
        entry.description(show_notes)
        entry.enclosure(episode.audio_url, str(episode.audio_bytes), "audio/mpeg")
        entry.published(episode.published_at)
        entry.podcast.itunes_duration(episode.duration_seconds)
    return generator.rss_str()
