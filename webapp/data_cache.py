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

Value = TypeVar("Value")


class DataCache:
    """Values by key, for one state of the data (the last one a request read).

    Safe across threads: a lost race makes a value twice, never a wrong one.

    :param max_entries: at most this many values are kept; the least recently
        used goes first.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._state: tuple[int, object] | None = None
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, state: SiteState, key: Hashable, make: Callable[[], Value]) -> Value:
        """The value of ``key`` for the data in ``state``: kept, or made by ``make()`` and kept.

        If ``make`` raises (a 404 for a page past the last), nothing is kept.
        """
        data = (state.version, state.changed_at)
        with self._lock:
            if self._state == data and key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            if self._state != data:
                self._state = data
                self._values.clear()
            self._values[key] = value
            if len(self._values) > self.max_entries:
                self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)


def data_cache(name: str, max_entries: int = MAX_ENTRIES) -> DataCache:
    """The current app's cache called ``name``, made on first use with ``max_entries``."""
    caches: dict[str, DataCache] = current_app.extensions.setdefault("data_caches", {})
    cache = caches.get(name)
    if cache is None:
        cache = caches.setdefault(name, DataCache(max_entries))
    return cache
