"""Show notes as the site prints them: HTML from the site's editors, cleaned.

Show notes are the one field the site prints as HTML, and they come from
whatever writes the database: an editor's rich-text box, a paste from a word
processor, another host's feed imported. nh3 (the Ammonia sanitizer) keeps the
markup a page of notes needs and drops scripts, styles, event handlers, frames
and ``javascript:`` links, so none reaches a reader's browser even where
nginx's Content-Security-Policy is not in front (uWSGI alone, another proxy).
The page and the API print the same cleaned HTML; the feed cleans further, to
the tags Apple Podcasts shows (``rss.apple_show_notes``).
"""

from __future__ import annotations

import functools

import nh3
from markupsafe import Markup

#: Ammonia's defaults but the tags HTML5 made obsolete (the Nu Html Checker rejects them).
_PAGE_TAGS = nh3.ALLOWED_TAGS - {"acronym", "center", "strike", "tt"}
#: No rel added to links: Ammonia allows no ``target``, so no link opens a window that
#: could reach back, and the editors' HTML, when clean, comes out byte for byte.
_PAGE_CLEANER = nh3.Cleaner(tags=_PAGE_TAGS, link_rel=None, strip_comments=True)


@functools.lru_cache(maxsize=256)
def show_notes_html(html: str) -> Markup:
    """``html`` without what could run or restyle the page, as markup Jinja prints as it is.

    Cached by the notes themselves, for the pages rendered again and again (the API keeps each
    episode's answer itself, and the episode pages are frozen): a few hundred, since each entry
    holds the notes twice in every worker.
    """
    return Markup(_PAGE_CLEANER.clean(html))
