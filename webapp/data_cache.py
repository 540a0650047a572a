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

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from flask import current_app

from .models import SiteState

#: A cache holds at most this many answers; the least recently used go first.
MAX_ENTRIES = 1024
#: ... and at most this many bytes of them: a client that walks every (page, per_page) or
#: searches many texts bounds a worker's memory, not its own. Bytes, not characters:
#: CPython stores a str of one emoji at 4 bytes per character.
MAX_BYTES = 4_000_000

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class SizedLru(Generic[Key, Value]):
    """Values by key, bounded in entries and in bytes; the least recently used go first.

    Not locked: its owner holds a lock around each call.

    :param max_entries: at most this many values are kept.
    :param max_bytes: at most this many bytes of values, as the caller of :meth:`put`
        counts them; a value larger than that is not kept.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: The bytes of the values kept, as :meth:`put` was told them.
        self.kept_bytes = 0
        self._values: OrderedDict[Key, tuple[Value, int]] = OrderedDict()

    def get(self, key: Key) -> Value | None:
        """The value kept for ``key`` (now the most recently used), or None (so a value of
        None is as good as not kept)."""
        found = self._values.get(key)
        if found is None:
            return None
        self._values.move_to_end(key)
        return found[0]

    def put(self, key: Key, value: Value, size: int) -> None:
        """Keep ``value`` (``size`` bytes) for ``key``, the least recently used going for it."""
        if size > self.max_bytes:
            return  # it would push out everything else, and still not fit
        replaced = self._values.pop(key, None)
        if replaced is not None:
            self.kept_bytes -= replaced[1]
        self._values[key] = (value, size)
        self.kept_bytes += size
        while len(self._values) > self.max_entries or self.kept_bytes > self.max_bytes:
            self.kept_bytes -= self._values.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._values.clear()
        self.kept_bytes = 0

    def __len__(self) -> int:
        return len(self._values)


class DataCache:
    """Values by key, for one state of the data (the last one a request read).

    Safe across threads: a lost race makes a value twice, never a wrong one.

    :param max_entries: at most this many values are kept; the least recently
        used goes first.
    :param max_bytes: at most this many bytes of values (as ``size`` counts
        them) are kept, the least recently used going first; a value larger
        than that is answered and not kept. The keys are not counted: bounded
        by ``max_entries``, they are small beside the values (a search text).
    :param size: a value's size in bytes: ``sys.getsizeof`` by default, what a
        ``str`` or ``bytes`` value takes in memory.
    """

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        size: Callable[[Any], int] = sys.getsizeof,
    ) -> None:
        self.size = size
        self._state: tuple[int, object] | None = None
        self._values: SizedLru[Hashable, Any] = SizedLru(max_entries, max_bytes)
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        """The bytes of the values kept, as ``size`` counts them."""
        return self._values.kept_bytes

    def get_or_make(self, state: SiteState, key: Hashable, make: Callable[[], Value]) -> Value:
        """The value of ``key`` for the data in ``state``: kept, or made by ``make()`` and kept.

        If ``make`` raises (a 404 for a page past the last), nothing is kept.
        """
        data = (state.version, state.changed_at)
        with self._lock:
            if self._state == data:
                found = self._values.get(key)
                if found is not None:
                    return found
        value = make()
        size = self.size(value)
        with self._lock:
            if self._state != data:
                self._state = data
                self._values.clear()
            self._values.put(key, value, size)
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
