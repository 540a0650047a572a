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

import sys
import threading

import nh3
from markupsafe import Markup

from .data_cache import SizedLru

#: Ammonia's defaults but the tags HTML5 made obsolete (the Nu Html Checker rejects them).
_PAGE_TAGS = nh3.ALLOWED_TAGS - {"acronym", "center", "strike", "tt"}
#: No rel added to links: Ammonia allows no ``target``, so no link opens a window that
#: could reach back, and the editors' HTML, when clean, comes out byte for byte.
_PAGE_CLEANER = nh3.Cleaner(tags=_PAGE_TAGS, link_rel=None, strip_comments=True)

#: Cleaned notes kept per process: at most this many ...
SHOW_NOTES_KEPT = 256
#: ... and this many bytes of notes, as written and as cleaned. Bytes, since notes have no
#: length limit, and every edit leaves its old version in the cache until it is pushed out.
SHOW_NOTES_KEPT_BYTES = 4_000_000

_kept: SizedLru[str, Markup] = SizedLru(SHOW_NOTES_KEPT, SHOW_NOTES_KEPT_BYTES)
_kept_lock = threading.Lock()


def show_notes_html(html: str) -> Markup:
    """``html`` without what could run or restyle the page, as markup Jinja prints as it is.

    Kept by the notes themselves, for the pages rendered again and again (the API keeps each
    episode's answer itself, and the episode pages are frozen), the least recently used going
    first: a version an edit replaced is not used again, and goes.
    """
    with _kept_lock:
        found = _kept.get(html)
    if found is not None:
        return found
    cleaned = Markup(_PAGE_CLEANER.clean(html))
    with _kept_lock:
        _kept.put(html, cleaned, sys.getsizeof(html) + sys.getsizeof(cleaned))
    return cleaned
