"""A listing's file and its .gz, made from the live build's: only what changed is new.

A listing (``webapp.listing.Listing``: the catalogue, the feed) is its frame's
``before``, one fragment per episode, newest number first, and its ``after``.
Its :class:`Layout` records the length of each part; its ``.gz`` is gzipped in
chunks (``chunked_gzip``), cut where ``Listing.chunks`` cuts the page (a chunk
starts at each episode whose number is a multiple of ``chunk_every``), each
chunk's record kept in the ``.gz``'s layout.

A rebuild after an edit renders the fragments of the changed episodes only,
and describes the new file as :class:`Range` s of the live file around
them (copied by the kernel, never read) and the new bytes; a chunk whose
bytes and 32 KiB window hold none of the new bytes is copied from the live
``.gz`` the same way, so an edit deflates a few chunks, not the whole file,
and the trailer's CRC comes from the chunks' (``chunked_gzip.crc32_combine``)::

    splice = Splice.plan(live, numbers, {300: b"<li>…</li>"}, (), before, after)
    splice.pieces       # [b"<!doctype…", Range(812, 30410), b"<li>…", Range(31507, …), b"</ol>…"]
    pieces, layout = splice.gzip(chunk_every, deflate).finish()
    pieces              # [HEADER, Range(10, 40127), b"\\x…", Range(…), FINAL_BLOCK, trailer]

A build from scratch is the same with no live file: every piece is new.
Nothing of the live files is trusted unless their layouts tile them exactly.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import operator
import zlib
from array import array
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import NamedTuple

from . import chunked_gzip
from .chunked_gzip import FINAL_BLOCK, HEADER, TRAILER_SIZE, WINDOW, ChunkRecord
from .output import Range

#: The key of the first chunk (the others are keyed by the episode number they start at).
BEFORE = "before"


Piece = bytes | Range


class Layout(NamedTuple):
    """What a listing's file is made of: the frame's lengths, and each fragment's."""

    before: int
    after: int
    #: each episode's fragment length, in the order of the build's episodes
    lengths: array

    def to_json(self) -> str:
        lengths = base64.b64encode(self.lengths.tobytes()).decode()
        return json.dumps({"before": self.before, "after": self.after, "lengths": lengths})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        """Raises ValueError (or KeyError, TypeError) for anything but a layout."""
        layout = json.loads(text)
        lengths = array("q")
        lengths.frombytes(base64.b64decode(layout["lengths"], validate=True))
        return cls(int(layout["before"]), int(layout["after"]), lengths)

    @property
    def size(self) -> int:
        return self.before + sum(self.lengths) + self.after


class LiveListing(NamedTuple):
    """The live build's listing: the layout of its file and its .gz, and how to read them."""

    layout: Layout
    #: the episode numbers its fragments are of, in order
    numbers: Sequence[int]
    #: its .gz's chunks, by key, with each one's offset in the .gz
    chunks: Mapping[str | int, tuple[int, ChunkRecord]]
    #: ``read(offset, size)`` of the live file
    read: Callable[[int, int], bytes]

    @classmethod
    def of(
        cls,
        layout: Layout,
        numbers: Sequence[int],
        chunks_json: str,
        sizes: tuple[int, int],
        read: Callable[[int, int], bytes],
    ) -> LiveListing:
        """The live listing, if its layouts tile its file and .gz of ``sizes``; else ValueError."""
        if len(layout.lengths) != len(numbers) or layout.size != sizes[0]:
            raise ValueError("the layout does not describe the live file")
        chunks: dict[str | int, tuple[int, ChunkRecord]] = {}
        offset = len(HEADER)
        for key, *record in json.loads(chunks_json)["chunks"]:
            chunk = ChunkRecord(*record)
            chunks[key] = (offset, chunk)
            offset += chunk.deflated
        if offset + len(FINAL_BLOCK) + TRAILER_SIZE != sizes[1]:
            raise ValueError("the chunks do not describe the live .gz")
        return cls(layout, numbers, chunks, read)


class Gzip:
    """A listing's .gz in the making: its chunks, copied, deflated or deflating (a Future)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[str | int, ChunkRecord, Range | bytes | Future[bytes]]] = []

    def copy(self, key: str | int, offset: int, record: ChunkRecord) -> None:
        """A chunk of the live .gz, at ``offset`` in it."""
        self._chunks.append((key, record, Range(offset, record.deflated)))

    def add(
        self, key: str | int, chunk: chunked_gzip.Chunk, deflated: bytes | Future[bytes]
    ) -> None:
        """A new chunk, deflated into ``deflated``."""
        record = ChunkRecord(chunk.digest, -1, len(chunk.data), zlib.crc32(chunk.data))
        self._chunks.append((key, record, deflated))

    @property
    def digests(self) -> list[str]:
        return [record.digest for _, record, _ in self._chunks]

    def finish(self) -> tuple[list[bytes | Range], str]:
        """The .gz's pieces, every chunk deflated, and its layout (JSON). Waits for the deflates."""
        pieces: list[bytes | Range] = [HEADER]
        records, rows = [], []
        for key, record, piece in self._chunks:
            if isinstance(piece, Future):
                piece = piece.result()
            if isinstance(piece, bytes):
                record = record._replace(deflated=len(piece))
            last = pieces[-1]
            if isinstance(piece, Range) and isinstance(last, Range) and sum(last) == piece.offset:
                pieces[-1] = Range(last.offset, last.size + piece.size)  # one copy, not two
            else:
                pieces.append(piece)
            records.append(record)
            rows.append([key, *record])
        pieces += [FINAL_BLOCK, chunked_gzip.trailer(records)]
        return pieces, json.dumps({"chunks": rows}, separators=(",", ":"))


class Splice:
    """A listing's new file as pieces, and where in it the new bytes are.

    Made by :meth:`plan`; :meth:`gzip` then makes its .gz.
    """

    def __init__(
        self,
        pieces: list[Piece],
        layout: Layout,
        numbers: Sequence[int],
        dirty: list[tuple[int, int]],
        live: LiveListing | None,
    ) -> None:
        self.pieces = pieces
        self.layout = layout
        self.numbers = numbers
        #: Byte ranges of the new file that are not the live file's bytes in the
        #: live order: new fragments, a new frame, and empty ones where a
        #: fragment went (what follows moved up against what preceded it).
        self.dirty = dirty
        self.live = live
        self._starts = list(itertools.accumulate((_size(piece) for piece in pieces), initial=0))

    @classmethod
    def plan(
        cls,
        live: LiveListing | None,
        numbers: Sequence[int],
        fragments: Mapping[int, bytes],
        removed: Collection[int],
        before: bytes,
        after: bytes,
    ) -> Splice:
        """The file of ``numbers``' fragments (newest first) between ``before`` and ``after``.

        ``fragments`` holds the new fragment of each episode that is not in the
        live file in the same revision, and ``removed`` the numbers of those the
        live file has and ``numbers`` does not; every other fragment is copied.
        Raises ValueError if they do not account for every difference.
        """
        old_numbers: Sequence[int] = live.numbers if live is not None else ()
        old_lengths = live.layout.lengths if live is not None else array("q")
        start = live.layout.before if live is not None else 0
        old_offsets = list(itertools.accumulate(old_lengths, initial=start))
        pieces: list[Piece] = [before]
        lengths = array("q")
        dirty: list[tuple[int, int]] = []
        if live is None or before != live.read(0, live.layout.before):
            dirty.append((0, len(before)))
        position = len(before)
        old_at = new_at = 0
        for number in sorted({*fragments, *removed}, reverse=True):
            # Up to ``number``, both lists hold the same episodes: copy them.
            old_end = bisect.bisect_left(old_numbers, -number, old_at, key=operator.neg)
            new_end = bisect.bisect_left(numbers, -number, new_at, key=operator.neg)
            if new_end - new_at != old_end - old_at:
                raise ValueError("the fragments and removals do not account for every change")
            if old_end > old_at:
                size = old_offsets[old_end] - old_offsets[old_at]
                pieces.append(Range(old_offsets[old_at], size))
                lengths.extend(old_lengths[old_at:old_end])
                position += size
            in_old = old_end < len(old_numbers) and old_numbers[old_end] == number
            in_new = new_end < len(numbers) and numbers[new_end] == number
            if in_new:
                fragment = fragments[number]
                pieces.append(fragment)
                lengths.append(len(fragment))
                dirty.append((position, position + len(fragment)))
                position += len(fragment)
            else:
                dirty.append((position, position))
            old_at, new_at = old_end + in_old, new_end + in_new
        if len(numbers) - new_at != len(old_numbers) - old_at:
            raise ValueError("the fragments and removals do not account for every change")
        if len(old_numbers) > old_at:
            size = old_offsets[-1] - old_offsets[old_at]
            pieces.append(Range(old_offsets[old_at], size))
            lengths.extend(old_lengths[old_at:])
            position += size
        if live is None or after != live.read(live.layout.size - live.layout.after, len(after)):
            dirty.append((position, position + len(after)))
        pieces.append(after)
        return cls(pieces, Layout(len(before), len(after), lengths), numbers, dirty, live)

    @property
    def size(self) -> int:
        return self._starts[-1]

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the new file."""
        parts = []
        index = bisect.bisect_right(self._starts, start) - 1
        while start < end:
            piece, piece_start = self.pieces[index], self._starts[index]
            take = min(end, self._starts[index + 1]) - start
            if isinstance(piece, Range):
                assert self.live is not None
                parts.append(self.live.read(piece.offset + start - piece_start, take))
            else:
                parts.append(piece[start - piece_start : start - piece_start + take])
            start += take
            index += 1
        return b"".join(parts)

    def chunks(self, chunk_every: int) -> list[tuple[str | int, int, int]]:
        """The new file's chunks, as (key, start, end), in order.

        Cut as ``webapp.listing.Listing.chunks`` cuts the page for its view, so
        the view's gzip and this .gz are the same bytes: a chunk starts at each
        fragment whose episode's number is a multiple of ``chunk_every`` (keyed
        by that number), ``before`` opens the first (key ``BEFORE``) and
        ``after`` closes the last. Numbers, not sizes, so an edit moves no
        other chunk's edges. Found by bisection, one per multiple, not by
        looking at every number.
        """
        offsets = list(itertools.accumulate(self.layout.lengths, initial=self.layout.before))
        numbers = self.numbers
        chunks: list[tuple[str | int, int, int]] = []
        key: str | int = BEFORE
        start = 0
        if numbers:
            multiple, at = numbers[0] - numbers[0] % chunk_every, 0
            while multiple >= numbers[-1]:
                at = bisect.bisect_left(numbers, -multiple, at, key=operator.neg)
                if numbers[at] == multiple:
                    chunks.append((key, start, offsets[at]))
                    key, start = multiple, offsets[at]
                multiple -= chunk_every
        chunks.append((key, start, self.size))
        return chunks

    def gzip(
        self,
        chunk_every: int,
        deflate: Callable[[chunked_gzip.Chunk], bytes | Future[bytes]],
        reusable: Mapping[str, bytes] | None = None,
    ) -> Gzip:
        """The new file's .gz: each chunk copied from the live .gz if it and its
        window are the live bytes in the live order, else taken from ``reusable``
        by digest, else ``deflate`` d."""
        gzip = Gzip()
        for key, start, end in self.chunks(chunk_every):
            window_start = max(0, start - WINDOW)
            live = self.live.chunks.get(key) if self.live is not None else None
            if live is not None and live[1].size == end - start and self._clean(window_start, end):
                gzip.copy(key, *live)
                continue
            data, window = self.read(start, end), self.read(window_start, start)
            chunk = chunked_gzip.Chunk(data, window, chunked_gzip.chunk_digest(window, data))
            kept = reusable.get(chunk.digest) if reusable is not None else None
            gzip.add(key, chunk, kept if kept is not None else deflate(chunk))
        return gzip

    def _clean(self, start: int, end: int) -> bool:
        """True if bytes ``start`` to ``end`` are the live file's, in the live order."""
        for dirty_start, dirty_end in self.dirty:
            if dirty_start == dirty_end:
                if start < dirty_start < end:
                    return False
            elif dirty_start < end and dirty_end > start:
                return False
        return True


def _size(piece: Piece) -> int:
    return piece.size if isinstance(piece, Range) else len(piece)
