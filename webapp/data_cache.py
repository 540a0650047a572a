"""Answers made from the site's data, kept in each process until the data changes.

Every write to published data moves ``site_state`` (its version and
``changed_at``: see the schemas' triggers), which a request reads with one
primary-key lookup. While it stays the same, whatever is made only from the
data and the request's parameters (a page of the API's list, a page of
search results) is the same too, so it is made once and kept::

    state = queries.site_state(session)
    page = data_cache("api_pages").get_or_make(state, (page, per_page), make_page)

The feed keeps its one rendered body the same way (blueprints/feed.py). A
change of the data empties the cache, so nothing is served from older data
than the request read; a write made with the triggers off (which no code
path does) is not seen, as by the feed and the freezer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from flask import current_app

from .models import SiteState

#: A cache holds at most this many answers; the least recently used go first.
MAX_ENTRIES = 1024
#: ... and at most this many characters of them: a client that walks every
#: (page, per_page) or searches many texts bounds a worker's memory, not its own.
MAX_CHARS = 4_000_000

Value = TypeVar("Value")


class DataCache:
    """Values by key, for one state of the data (the last one a request read).

    Safe across threads: a lost race makes a value twice, never a wrong one.

    :param max_entries: at most this many values are kept; the least recently
        used goes first.
    :param max_chars: at most this many characters of values (as ``size``
        counts them) are kept, the least recently used going first; a value
        larger than that is answered and not kept.
    :param size: a value's size in characters (``len`` by default).
    """

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_chars: int = MAX_CHARS,
        size: Callable[[Any], int] = len,
    ) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.size = size
        self.chars = 0
        self._state: tuple[int, object] | None = None
        self._values: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, state: SiteState, key: Hashable, make: Callable[[], Value]) -> Value:
        """The value of ``key`` for the data in ``state``: kept, or made by ``make()`` and kept.

        If ``make`` raises (a 404 for a page past the last), nothing is kept.
        """
        data = (state.version, state.changed_at)
        with self._lock:
            if self._state == data and key in self._values:
                self._values.move_to_end(key)
                return self._values[key][0]
        value = make()
        size = self.size(value)
        if size > self.max_chars:
            return value
        with self._lock:
            if self._state != data:
                self._state = data
                self._values.clear()
                self.chars = 0
            replaced = self._values.pop(key, None)
            if replaced is not None:
                self.chars -= replaced[1]
            self._values[key] = (value, size)
            self.chars += size
            while len(self._values) > self.max_entries or self.chars > self.max_chars:
                self.chars -= self._values.popitem(last=False)[1][1]
        return value

    def __len__(self) -> int:
        return len(self._values)


T = TypeVar("T")


def per_app(key: str, make: Callable[[], T]) -> T:
    """The current app's ``app.extensions[key]``, made by ``make()`` on its first use.

    Made in the process that uses it (uWSGI forks before any request), and
    one per app, so apps of other settings in one process never share it.
    """
    extensions = current_app.extensions
    found = extensions.get(key)
    if found is None:
        found = extensions.setdefault(key, make())
    return found


def data_cache(name: str, **options: Any) -> DataCache:
    """The current app's cache called ``name``, made with ``options`` on its first use.

    Each name has one call site, so its options are always the same.
    """
    return per_app(f"data_cache.{name}", lambda: DataCache(**options))
