"""A listing's file and .gz made from the live ones equal the ones made from scratch.

Pure unit tests of webapp/freeze/splice.py, no database: a random "catalogue"
is built from scratch, then changed (episodes edited, published, deleted, the
frame changed) and rebuilt from the first build's files; the bytes of the
file and of its .gz must be those of a build from scratch of the new
catalogue, while only the new fragments are handed over, and only the chunks
an edit reaches (its own, and those whose 32 KiB window it is in) are deflated.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable

import pytest

from webapp.freeze import chunked_gzip
from webapp.freeze.splice import BEFORE, Layout, LiveListing, Range, Splice
from webapp.listing import Listing

CHUNK_EVERY = 8


def fragment(number: int, revision: int, rng_seed: int = 0) -> bytes:
    rng = random.Random(f"{number}-{revision}-{rng_seed}")
    words = " ".join(rng.choice(["python", "flask", "feed", "gzip", "chunk"]) for _ in range(300))
    return f"<item><n>{number}</n><r>{revision}</r>{words}</item>\n".encode()


class Built:
    """A listing built by Splice, as the freezer writes it: its file, its .gz and their layouts."""

    def __init__(
        self,
        catalogue: dict[int, int],
        frame: tuple[bytes, bytes],
        live: Built | None = None,
        deflated: list[str] | None = None,
    ) -> None:
        self.catalogue = dict(catalogue)
        self.numbers = sorted(catalogue, reverse=True)
        changed = {
            number: fragment(number, revision)
            for number, revision in catalogue.items()
            if live is None or live.catalogue.get(number) != revision
        }
        removed = set(live.catalogue) - set(catalogue) if live is not None else set()
        splice = Splice.plan(
            live.listing() if live is not None else None,
            self.numbers,
            changed,
            removed,
            *frame,
        )
        self.handed = set(changed)

        def deflate(chunk: chunked_gzip.Chunk) -> bytes:
            if deflated is not None:
                deflated.append(chunk.digest)
            return chunked_gzip.deflate(chunk)

        self.data = b"".join(self._bytes(piece, live, "data") for piece in splice.pieces)
        self.layout = splice.layout
        pieces, self.chunks = splice.gzip(CHUNK_EVERY, deflate).finish()
        self.gz = b"".join(self._bytes(piece, live, "gz") for piece in pieces)

    @staticmethod
    def _bytes(piece: bytes | Range, live: Built | None, name: str) -> bytes:
        if isinstance(piece, Range):
            assert live is not None
            return getattr(live, name)[piece.offset : piece.offset + piece.size]
        return piece

    def listing(self) -> LiveListing:
        layout = Layout.from_json(self.layout.to_json())
        return LiveListing.of(
            layout,
            self.numbers,
            self.chunks,
            (len(self.data), len(self.gz)),
            lambda offset, size: self.data[offset : offset + size],
        )


FRAME = (b"<rss><channel>" + b"<title>podcast</title>" * 20, b"</channel></rss>\n")


def catalogue_of(size: int) -> dict[int, int]:
    return {number: 1 for number in range(1, size + 1)}


CHANGES: dict[str, Callable[[dict[int, int]], None]] = {
    "nothing": lambda c: None,
    "one edit": lambda c: c.update({37: 2}),
    "the newest edited": lambda c: c.update({max(c): 2}),
    "the oldest edited": lambda c: c.update({1: 2}),
    "a publish": lambda c: c.update({max(c) + 1: 1}),
    "a publish on a chunk's edge": lambda c: c.update({CHUNK_EVERY * 20: 1}),
    "a deletion": lambda c: c.pop(50),
    "the newest deleted": lambda c: c.pop(max(c)),
    "edits everywhere": lambda c: c.update({n: 3 for n in range(1, max(c), 7)}),
    "deletions and edits side by side": lambda c: (c.pop(20), c.pop(21), c.update({22: 5})),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
@pytest.mark.parametrize("frame_changes", [False, True], ids=["same frame", "new frame"])
def test_a_listing_made_from_the_live_one_is_the_one_made_from_scratch(change, frame_changes):
    live = Built(catalogue_of(150), FRAME)
    catalogue = dict(live.catalogue)
    change(catalogue)
    frame = (FRAME[0].replace(b"podcast", b"PODCAST"), FRAME[1]) if frame_changes else FRAME

    spliced = Built(catalogue, frame, live)
    fresh = Built(catalogue, frame)

    assert spliced.data == fresh.data
    assert spliced.gz == fresh.gz
    assert gzip.decompress(spliced.gz) == spliced.data
    assert spliced.layout == fresh.layout and spliced.chunks == fresh.chunks
    assert spliced.handed == {n for n, r in catalogue.items() if live.catalogue.get(n) != r}


def test_an_edit_deflates_its_chunk_and_those_whose_window_it_reaches():
    live = Built(catalogue_of(150), FRAME)  # fragments of ~2 KB: chunks of 8 are ~16 KiB
    catalogue = dict(live.catalogue)
    catalogue[100] = 2  # in chunk 104 (104-97); the next chunks (96 and below) follow it
    deflated: list[str] = []
    Built(catalogue, FRAME, live, deflated)
    fresh = Built(catalogue, FRAME)
    keys = {record[1]: record[0] for record in _rows(fresh.chunks)}
    # Its own chunk, and the two after it (their 32 KiB windows reach back into it).
    assert [keys[digest] for digest in deflated] == [104, 96, 88]


def test_layouts_that_do_not_tile_the_files_are_refused():
    live = Built(catalogue_of(40), FRAME)
    layout = live.listing().layout
    shifted = layout._replace(before=layout.before + 1)
    with pytest.raises(ValueError):
        LiveListing.of(shifted, live.numbers, live.chunks, (len(live.data), len(live.gz)), None)
    with pytest.raises(ValueError):
        LiveListing.of(layout, live.numbers, live.chunks, (len(live.data), len(live.gz) + 1), None)
    with pytest.raises(ValueError):
        LiveListing.of(layout, live.numbers[1:], live.chunks, (len(live.data), len(live.gz)), None)


def test_unaccounted_changes_are_refused():
    live = Built(catalogue_of(40), FRAME)
    with pytest.raises(ValueError, match="do not account"):
        Splice.plan(live.listing(), [41, *live.numbers], {}, set(), *FRAME)  # 41 has no fragment
    with pytest.raises(ValueError, match="do not account"):
        Splice.plan(live.listing(), live.numbers[1:], {}, set(), *FRAME)  # 40 went, unsaid


def test_the_first_chunk_opens_with_the_frame_and_the_others_start_at_multiples():
    built = Built(catalogue_of(20), FRAME)
    assert [row[0] for row in _rows(built.chunks)] == [BEFORE, 16, 8]


@pytest.mark.parametrize("seed", range(12))
def test_the_gz_is_the_gzip_the_listing_view_sends(seed):
    """Cut where ``Listing.chunks`` cuts (the feed's view gzips those chunks), also where a
    multiple of chunk_every is missing, for a fresh build and one spliced from the live one."""
    rng = random.Random(seed)
    live = Built({n: 1 for n in rng.sample(range(1, 120), rng.randint(0, 60))}, FRAME)
    catalogue = dict(live.catalogue)
    for number in rng.sample(range(1, 130), 10):
        if number in catalogue and rng.random() < 0.5:
            del catalogue[number]
        else:
            catalogue[number] = 2
    listing = Listing(None, None, chunk_every=CHUNK_EVERY)  # type: ignore[arg-type]
    items = [(n, fragment(n, catalogue[n])) for n in sorted(catalogue, reverse=True)]
    view_gz = chunked_gzip.compress(listing.chunks(FRAME[0], items, FRAME[1])).data

    assert Built(catalogue, FRAME).gz == view_gz
    assert Built(catalogue, FRAME, live).gz == view_gz


def _rows(chunks_json: str) -> list[list]:
    return json.loads(chunks_json)["chunks"]
