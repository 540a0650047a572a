"""Pages that list episodes: a frame around one fragment per episode.

The catalogue, the home page, the search results and the feed each show a
page (the *frame*) around one fragment per episode (an ``<li>``, an
``<item>``). Views and the freezer render them the same way, through this
module::

    frame = template_frame("catalogue.html", count=len(entries))    # (before, after)
    items = EPISODE_ITEMS.for_entries(entries, load)                  # one str per entry
    body = compose(frame, items)

or, for a page registered as a :class:`Listing`, ``listing.render(entries, load)``
(``listing.render_chunks`` for its bytes cut where its gzip chunks start, as the
feed's view and the freezer cut it).

A template's frame is the page rendered with its ``items`` block standing
for the fragments (Jinja's low-level API yields a marker object there, so no
text of the page can be mistaken for it). A fragment depends only on its
episode, so :class:`Fragments` keeps each one rendered, per app, under the
episode's revision (the token the database's triggers draw anew at every
change of the episode or its guests): a page of 50 results renders the
episodes it has not shown before, and only those are read in full.

Pages the freezer composes itself are registered on their blueprint, by the
view's endpoint, the way Frozen-Flask's ``register_generator`` extends a
freezer::

    register_page(blueprint, "catalogue", CATALOGUE)    # a Listing
    register_page(blueprint, "episode", render_episode)  # Episode -> the page's text

The freezer looks them up with :func:`page_renderer`; any other page it gets
by dispatching its URL through the app.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from flask import Blueprint, Flask, current_app
from flask.blueprints import BlueprintSetupState

from .data_cache import per_app

#: The block of a listing's template where the fragments go.
ITEMS_BLOCK = "items"
#: A fragment cache holds at most this many episodes; past it, it starts over
#: (so a worker's memory stays bounded whatever the catalogue's size). Not bounded in
#: bytes by default: it holds one fragment per episode (an edit replaces it), so at most
#: what the catalogue's view composes on each request; a bound below that would make the
#: catalogue start it over, and render every episode, at every request.
MAX_CACHED_FRAGMENTS = 20_000


class Entry(Protocol):
    """An episode as a listing knows it before reading it: its number and revision."""

    @property
    def number(self) -> int: ...

    @property
    def revision(self) -> int | None: ...


class Frame(NamedTuple):
    """A page around its fragments: the text before them and after them."""

    before: str
    after: str


#: Reads the episodes with these numbers (those that exist), in any order.
Loader = Callable[[Sequence[int]], Iterable[Any]]


def compose(frame: Frame, fragments: Iterable[str]) -> str:
    """The page: its frame around its fragments."""
    return f"{frame.before}{''.join(fragments)}{frame.after}"


class _ItemsMarker:
    """Where the ``items`` block is, in a template's output."""


_ITEMS = _ItemsMarker()


def _items_block(context: object) -> Iterable[object]:
    yield _ITEMS


def template_frame(template_name: str, **context: Any) -> Frame:
    """The page ``template_name`` renders for ``context``, split where its ``items`` block is.

    Rendered as ``render_template`` renders (the app's context processors
    included), with the block replaced by a marker. A template that does not
    reach the block (an ``if`` around it) gives ``after == ""``: a frame for
    no items.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    template = app.jinja_env.get_or_select_template(template_name)
    app.update_template_context(context)
    jinja_context = template.new_context(context)
    jinja_context.blocks[ITEMS_BLOCK] = [_items_block]
    parts: list[Any] = []
    try:
        parts.extend(template.root_render_func(jinja_context))
    except Exception:
        template.environment.handle_exception()  # raises, with the template's traceback
    if _ITEMS not in parts:
        return Frame("".join(parts), "")
    at = parts.index(_ITEMS)
    after = parts[at + 1 :]
    if _ITEMS in after or not all(isinstance(part, str) for part in after):
        raise ValueError(f"{template_name} renders its {ITEMS_BLOCK!r} block more than once")
    return Frame("".join(parts[:at]), "".join(after))


class Fragments:
    """One kind of per-episode fragment, rendered by ``render`` and kept per app by revision.

    :param name: names the app's cache of these fragments.
    :param render: renders the fragments of some episodes, in their order.
    :param cached: keep each rendered fragment for the episode's revision.
        Off for fragments whose page is cached whole (the feed), which would
        otherwise be held twice. Never on while templates auto-reload.
    :param max_bytes: bounds the bytes kept (see FragmentCache), for
        fragments as large as an episode's whole text.
    """

    def __init__(
        self,
        name: str,
        render: Callable[[Sequence[Any]], list[str]],
        *,
        cached: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.render = render
        self.cached = cached
        self.max_bytes = max_bytes

    def for_entries(self, entries: Sequence[Entry], load: Loader) -> list[str]:
        """The fragments of ``entries``, in order: those kept, and the rest loaded and rendered.

        An entry whose episode ``load`` no longer finds (deleted since) is left out.
        """
        return [fragment for _, fragment in self.numbered(entries, load)]

    def numbered(self, entries: Sequence[Entry], load: Loader) -> list[tuple[int, str]]:
        """``for_entries``, each fragment with its episode's number."""
        cache = self._cache()
        kept = [None] * len(entries) if cache is None else cache.get_many(entries)
        missing = [entry for entry, fragment in zip(entries, kept, strict=True) if fragment is None]
        if not missing:
            return [(entry.number, fragment) for entry, fragment in zip(entries, kept, strict=True)]  # type: ignore[misc]
        episodes = _in_order(missing, load([entry.number for entry in missing]))
        texts = self.render(episodes)
        rendered = {episode.number: text for episode, text in zip(episodes, texts, strict=True)}
        if cache is not None:
            for entry in missing:
                if entry.number in rendered:
                    cache.put(entry.number, entry.revision, rendered[entry.number])
        return [
            (entry.number, fragment if fragment is not None else rendered[entry.number])
            for entry, fragment in zip(entries, kept, strict=True)
            if fragment is not None or entry.number in rendered
        ]

    def _cache(self) -> FragmentCache | None:
        if not self.cached or current_app.jinja_env.auto_reload:
            return None
        return per_app(f"fragments.{self.name}", lambda: FragmentCache(max_bytes=self.max_bytes))


class FragmentCache:
    """Rendered fragments by episode number, each valid for one revision of its episode.

    One entry per episode: a new revision replaces the old. Safe across
    threads: a lost race renders a fragment twice, never a wrong one.

    :param max_entries: past this many episodes, the cache starts over.
    :param max_bytes: past this many bytes in all, too (None: no bound), each fragment
        counted as it is stored (``sys.getsizeof``: a str holding an emoji takes 4 bytes
        per character).
    """

    def __init__(
        self, max_entries: int = MAX_CACHED_FRAGMENTS, max_bytes: int | None = None
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[int, tuple[int, str]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, number: int, revision: int | None) -> str | None:
        entry = self._entries.get(number)
        # None is never stored as a revision, so it never matches one.
        return entry[1] if entry is not None and entry[0] == revision else None

    def get_many(self, entries: Sequence[Entry]) -> list[str | None]:
        """``get`` for each entry, in order (one call: a page of 100 makes 100 lookups)."""
        found = [self._entries.get(entry.number) for entry in entries]
        return [
            kept[1] if kept is not None and kept[0] == entry.revision else None
            for entry, kept in zip(entries, found, strict=True)
        ]

    def put(self, number: int, revision: int | None, fragment: str) -> None:
        if revision is None:
            return  # written with the triggers off: nothing tells its changes apart
        with self._lock:
            replaced = self._entries.get(number)
            if replaced is not None:
                self._bytes -= sys.getsizeof(replaced[1])
            size = sys.getsizeof(fragment)
            full = len(self._entries) >= self.max_entries and replaced is None
            if full or (self.max_bytes is not None and self._bytes + size > self.max_bytes):
                self._entries.clear()
                self._bytes = 0
            self._entries[number] = (revision, fragment)
            self._bytes += size

    def __len__(self) -> int:
        return len(self._entries)


def _in_order(entries: Sequence[Entry], episodes: Iterable[Any]) -> list[Any]:
    """``episodes`` in the order of ``entries``; an entry whose episode is gone is dropped."""
    by_number = {episode.number: episode for episode in episodes}
    return [by_number[entry.number] for entry in entries if entry.number in by_number]


class Listing:
    """A page of episodes: a frame around one fragment per episode.

    :param frame: ``frame(entries, state)``, the page around the fragments of
        ``entries``; ``state`` is the :class:`~webapp.models.SiteState` its
        view read, or None if it read none.
    :param fragments: the fragment of each episode.
    :param chunk_every: the page's gzip is deflated in chunks (see
        webapp/freeze/chunked_gzip.py), one starting at each episode whose
        number is a multiple of this (:meth:`chunks`). Numbers, not sizes, so
        a publish or an edit moves no other chunk's start. An edit deflates
        its chunk and those whose 32 KiB window it reaches: smaller chunks
        deflate less per edit and compress a little worse (docs/tuning.md).
    :param modified: ``modified(state)``, the modification time of the page's
        frozen files, if not the build's: the feed's is when its data changed,
        so nginx's ETag and Last-Modified for the file are the view's.
    """

    def __init__(
        self,
        frame: Callable[[Sequence[Entry], Any], Frame],
        fragments: Fragments,
        *,
        chunk_every: int,
        modified: Callable[[Any], datetime] | None = None,
    ) -> None:
        self.frame = frame
        self.fragments = fragments
        self.chunk_every = chunk_every
        self.modified = modified

    def render(self, entries: Sequence[Entry], load: Loader, state: Any = None) -> str:
        """The page for ``entries``, as its view answers it."""
        return compose(self.frame(entries, state), self.fragments.for_entries(entries, load))

    def render_chunks(
        self, entries: Sequence[Entry], load: Loader, state: Any = None
    ) -> list[bytes]:
        """The page for ``entries`` as UTF-8, cut where its gzip chunks start (:meth:`chunks`)."""
        before, after = self.frame(entries, state)
        items = self.fragments.numbered(entries, load)
        return self.chunks(
            before.encode(), ((number, item.encode()) for number, item in items), after.encode()
        )

    def chunks(
        self, before: bytes, items: Iterable[tuple[int, bytes]], after: bytes
    ) -> list[bytes]:
        """The page's bytes, its frame around ``(number, fragment)`` items, cut into the chunks its
        gzip is deflated in (webapp/freeze/chunked_gzip.py): a new one starts at each item whose
        number is a multiple of ``chunk_every``; ``before`` opens the first, ``after`` closes the
        last. The one rule of the view and the freezer, so both make the same gzip.
        """
        chunks: list[bytes] = []
        chunk = [before]
        for number, item in items:
            if number % self.chunk_every == 0:
                chunks.append(b"".join(chunk))
                chunk = []
            chunk.append(item)
        chunks.append(b"".join([*chunk, after]))
        return chunks


#: What the freezer can render itself: a listing, or an episode's page from the episode.
PageRenderer = Listing | Callable[[Any], str]


def register_page(blueprint: Blueprint, endpoint: str, renderer: PageRenderer) -> None:
    """Tell the freezer how the page of ``blueprint``'s ``endpoint`` is made (see page_renderer)."""

    def register(state: BlueprintSetupState) -> None:
        state.app.extensions.setdefault("page_renderers", {})[f"{state.name}.{endpoint}"] = renderer

    blueprint.record_once(register)


def page_renderer(app: Flask, endpoint: str) -> PageRenderer | None:
    """The renderer registered for ``endpoint``; None for a page the app renders by itself."""
    renderers: Mapping[str, PageRenderer] = app.extensions.get("page_renderers", {})
    return renderers.get(endpoint)
