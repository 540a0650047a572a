"""Chunked gzip: one ordinary gzip file, nearly as small as gzip -9, rebuilt by deflating
only what changed.

Pure unit tests of webapp/freeze/chunked_gzip.py, no database: the output
decompresses to the chunks laid end to end, whatever their sizes; its header
is the fixed one nginx serves; it stays within 1% of one-piece gzip -9 on a
feed-sized document; and a rebuild given the last build's chunks is the same
bytes as a build from scratch while calling ``deflate`` (counted by wrapping
the real function) on exactly the chunks whose bytes or 32 KiB window moved.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib
from collections.abc import Callable

import pytest

from webapp.freeze import chunked_gzip
from webapp.freeze.chunked_gzip import FINAL_BLOCK, HEADER, WINDOW, compress, split

#: One-piece gzip -9 of the same bytes, the size the chunked output is held to.
WITHIN = 1.01
CHUNK = 100_000

WORDS = (
    "python flask uwsgi nginx postgresql sqlite async profiling caching testing packaging "
    "the a of and to in with for on at from by is was we our how why what episode guest "
    "production scale tuning benchmark latency throughput worker request response feed"
).split()


def text(rng: random.Random, size: int) -> bytes:
    """Exactly ``size`` compressible, never repeating, English-like bytes."""
    words: list[str] = []
    length = -1  # n words take n - 1 spaces
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    data = " ".join(words).encode()[:size]
    assert len(data) == size
    return data


def feed_xml(size: int, seed: int = 7) -> bytes:
    """About ``size`` bytes of RSS: the markup repeats, the guids and prose do not."""
    rng = random.Random(seed)
    items = ['<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>\n']
    length, number = len(items[0]), 0
    while length < size:
        number += 1
        item = (
            f"<item><title>Episode {number}: {text(rng, 60).decode()}</title>"
            f"<link>https://podcast.test/episodes/{number}/</link>"
            f'<guid isPermaLink="false">{rng.getrandbits(128):032x}</guid>'
            f"<pubDate>Mon, {rng.randint(1, 28):02d} Jan {rng.randint(2015, 2025)}"
            " 14:00:00 +0000</pubDate>"
            f"<description><![CDATA[<p>{text(rng, rng.randint(300, 900)).decode()}</p>]]>"
            "</description>"
            f'<enclosure url="https://media.example.com/audio/{number:04d}.mp3"'
            f' length="{rng.randint(10**7, 10**8)}" type="audio/mpeg"/>'
            f"<itunes:duration>{rng.randint(1500, 4500)}</itunes:duration></item>\n"
        )
        items.append(item)
        length += len(item)
    items.append("</channel></rss>\n")
    return "".join(items).encode()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def decompress_one_member(data: bytes) -> bytes:
    """The content of ``data``, which must be exactly one gzip member and nothing after it."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    content = decompressor.decompress(data) + decompressor.flush()
    assert decompressor.eof and decompressor.unused_data == b""
    return content


def flip(chunk: bytes, offset: int) -> bytes:
    """``chunk`` with the byte at ``offset`` changed."""
    return chunk[:offset] + bytes([chunk[offset] ^ 0x01]) + chunk[offset + 1 :]


@pytest.fixture
def deflated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digest of every chunk ``chunked_gzip.deflate`` is called on, in call order.

    The real function runs; the wrapper only writes down its argument.
    """
    calls: list[str] = []
    real: Callable[[chunked_gzip.Chunk], bytes] = chunked_gzip.deflate

    def counting(chunk: chunked_gzip.Chunk) -> bytes:
        calls.append(chunk.digest)
        return real(chunk)

    monkeypatch.setattr(chunked_gzip, "deflate", counting)
    return calls


def deflated_indexes(calls: list[str], chunks: list[bytes]) -> list[int]:
    """Which of ``chunks`` (by position) the recorded ``deflate`` calls were for."""
    position = {chunk.digest: index for index, chunk in enumerate(split(chunks))}
    return sorted(position[digest] for digest in calls)


RNG = random.Random(20240601)
CHUNK_LISTS = {
    "no chunks": [],
    "one empty chunk": [b""],
    "empty chunks between others": [b"", b"first", b"", b"", b"second", b""],
    "a single chunk": [b"one chunk of text, " * 200],
    "chunks smaller than the window": pieces(text(RNG, 50_000), 3_000),
    "chunks around the window's size": [
        text(RNG, WINDOW - 1),
        text(RNG, WINDOW),
        text(RNG, WINDOW + 1),
        b"x",
    ],
    "chunks larger than the window": pieces(text(RNG, 400_000), 90_000),
    "a tiny chunk after a large one": [text(RNG, 3 * WINDOW), b"<", text(RNG, 10)],
    "incompressible bytes": pieces(RNG.randbytes(150_000), 40_000),
    "repeated identical chunks": [b"same bytes " * 5_000] * 4,
}


@pytest.mark.parametrize("chunks", CHUNK_LISTS.values(), ids=CHUNK_LISTS.keys())
def test_output_decompresses_to_the_chunks_laid_end_to_end(chunks):
    data = compress(chunks).data
    assert gzip.decompress(data) == b"".join(chunks)
    assert decompress_one_member(data) == b"".join(chunks)


@pytest.mark.parametrize("chunks", CHUNK_LISTS.values(), ids=CHUNK_LISTS.keys())
def test_the_same_chunks_give_the_same_bytes_every_time(chunks):
    assert compress(list(chunks)).data == compress(list(chunks)).data


def test_trailer_holds_the_crc_and_the_size_of_the_whole():
    chunks = pieces(feed_xml(200_000), 30_000)
    whole = b"".join(chunks)
    data = compress(chunks).data
    assert data[-8:] == struct.pack("<II", zlib.crc32(whole), len(whole))
    assert data[-10:-8] == FINAL_BLOCK


def test_header_names_no_file_and_says_mtime_0_and_maximum_compression():
    data = compress([b"<rss>", b"</rss>"]).data
    magic, method, flags, mtime, xfl = struct.unpack("<2sBBIB", data[:9])
    assert magic == b"\x1f\x8b" and method == 8  # gzip, deflate
    assert flags == 0  # no FNAME, no FEXTRA, no FCOMMENT, no FHCRC
    assert mtime == 0
    assert xfl == 2  # "maximum compression"
    assert data[:10] == HEADER
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as reader:
        assert reader.read() == b"<rss></rss>"
        assert reader.mtime == 0
        assert reader.name == ""


def test_a_feed_sized_document_is_within_1_percent_of_gzip_9():
    data = feed_xml(1_000_000)
    chunks = pieces(data, CHUNK)
    assert len(chunks) == 11
    one_piece = len(gzip.compress(data, 9, mtime=0))
    chunked = len(compress(chunks).data)
    assert chunked <= one_piece * WITHIN, (chunked, one_piece)


def test_given_its_own_chunks_compress_returns_the_same_bytes_without_deflating(deflated):
    chunks = pieces(feed_xml(600_000), CHUNK)
    first = compress(chunks)
    assert len(deflated) == len(chunks)
    deflated.clear()

    again = compress(chunks, first.reusable())

    assert again == first
    assert deflated == []


@pytest.mark.parametrize(
    "offset, expected",
    [
        (0, [4]),
        (1_000, [4]),
        (CHUNK - WINDOW - 1, [4]),  # the last byte before the next chunk's window
        (CHUNK - WINDOW, [4, 5]),  # the first byte of it
        (CHUNK - 1, [4, 5]),
    ],
    ids=[
        "first byte",
        "early",
        "just before the last 32 KiB",
        "first of the last 32 KiB",
        "last byte",
    ],
)
def test_changing_one_middle_chunk_deflates_it_and_only_a_next_chunk_that_saw_the_change(
    deflated, offset, expected
):
    chunks = pieces(feed_xml(1_000_000), CHUNK)
    old = compress(chunks)
    new_chunks = list(chunks)
    new_chunks[4] = flip(chunks[4], offset)
    from_scratch = compress(new_chunks)
    deflated.clear()

    rebuilt = compress(new_chunks, old.reusable())

    assert rebuilt.data == from_scratch.data
    assert rebuilt == from_scratch
    assert deflated_indexes(deflated, new_chunks) == expected
    assert gzip.decompress(rebuilt.data) == b"".join(new_chunks)


def test_a_change_of_length_early_in_a_chunk_deflates_that_chunk_only(deflated):
    chunks = pieces(feed_xml(1_000_000), CHUNK)
    old = compress(chunks)
    new_chunks = list(chunks)
    new_chunks[6] = chunks[6][:500] + b"<title>A brand new episode title</title>" + chunks[6][500:]
    from_scratch = compress(new_chunks)
    deflated.clear()

    rebuilt = compress(new_chunks, old.reusable())

    assert rebuilt.data == from_scratch.data
    assert deflated_indexes(deflated, new_chunks) == [6]


@pytest.mark.parametrize(
    "index, expected", [(0, [0]), (-1, [10])], ids=["first chunk", "last chunk"]
)
def test_changing_the_first_or_last_chunk_early_deflates_that_chunk_only(deflated, index, expected):
    chunks = pieces(feed_xml(1_000_000), CHUNK)
    old = compress(chunks)
    new_chunks = list(chunks)
    new_chunks[index] = flip(chunks[index], 10)
    from_scratch = compress(new_chunks)
    deflated.clear()

    assert compress(new_chunks, old.reusable()).data == from_scratch.data
    assert deflated_indexes(deflated, new_chunks) == expected


def test_with_chunks_smaller_than_the_window_a_change_reaches_every_chunk_within_32_kib_after_it(
    deflated,
):
    # 10 KB chunks: the last byte of chunk 2 is in the windows of chunks 3, 4, 5 and 6
    # (30 KB of chunks 3-5 plus chunk 2's last 2 KB), not in chunk 7's.
    chunks = pieces(feed_xml(100_000), 10_000)
    old = compress(chunks)
    new_chunks = list(chunks)
    new_chunks[2] = flip(chunks[2], 10_000 - 1)
    from_scratch = compress(new_chunks)
    deflated.clear()

    assert compress(new_chunks, old.reusable()).data == from_scratch.data
    assert deflated_indexes(deflated, new_chunks) == [2, 3, 4, 5, 6]


def test_reusable_maps_each_digest_to_that_chunks_deflated_bytes_as_laid_out():
    chunks = pieces(feed_xml(500_000), CHUNK) + [b""]
    gz = compress(chunks)
    reusable = gz.reusable()
    split_chunks = split(chunks)

    assert [record.digest for record in gz.chunks] == [chunk.digest for chunk in split_chunks]
    assert list(reusable) == [record.digest for record in gz.chunks]
    assert [len(reusable[record.digest]) for record in gz.chunks] == [
        record.deflated for record in gz.chunks
    ]
    for chunk, record in zip(split_chunks, gz.chunks, strict=True):
        assert reusable[chunk.digest] == chunked_gzip.deflate(chunk)
        assert (record.size, record.crc) == (len(chunk.data), zlib.crc32(chunk.data))
    # Header, the chunks' bytes in order, the final block, the trailer: nothing else.
    assert gz.data == HEADER + b"".join(reusable.values()) + FINAL_BLOCK + gz.data[-8:]
    assert (
        len(gz.data)
        == len(HEADER) + sum(record.deflated for record in gz.chunks) + len(FINAL_BLOCK) + 8
    )


@pytest.mark.parametrize("change", [+1, -1])
def test_reusable_refuses_a_layout_that_does_not_tile_the_file(change):
    gz = compress(pieces(feed_xml(200_000), CHUNK))
    first, *rest = gz.chunks
    wrong = chunked_gzip.GzipChunks(
        gz.data, [first._replace(deflated=first.deflated + change), *rest]
    )
    with pytest.raises(ValueError, match="does not describe"):
        wrong.reusable()


def test_reusable_of_repeated_chunks_keeps_one_entry_per_distinct_digest():
    # Identical chunks after identical windows: the same digest, the same bytes.
    chunks = [b"a" * WINDOW] * 4
    gz = compress(chunks)
    digests = [record.digest for record in gz.chunks]
    assert len(set(digests)) == 2  # the first chunk has an empty window, the rest "a" * WINDOW
    assert set(gz.reusable()) == set(digests)
    assert compress(chunks, gz.reusable()) == gz


def test_a_digest_covers_the_window_so_the_same_chunk_after_other_bytes_is_not_reused(deflated):
    tail = text(random.Random(3), 5_000)
    old = compress([text(random.Random(1), WINDOW), tail])
    deflated.clear()
    new_chunks = [text(random.Random(2), WINDOW), tail]

    rebuilt = compress(new_chunks, old.reusable())

    assert deflated_indexes(deflated, new_chunks) == [0, 1]
    assert gzip.decompress(rebuilt.data) == b"".join(new_chunks)


def test_a_digest_tells_where_the_window_ends_and_the_chunk_begins():
    # Window b"ab" + chunk b"c" and window b"a" + chunk b"bc": the same bytes, not the same chunk.
    one, other = split([b"ab", b"c"])[1], split([b"a", b"bc"])[1]
    assert one.window + one.data == other.window + other.data
    assert one.digest != other.digest
    rebuilt = compress([b"a", b"bc"], compress([b"ab", b"c"]).reusable())
    assert gzip.decompress(rebuilt.data) == b"abc"


def test_crc32_combine_is_the_crc_of_the_pieces_end_to_end():
    rng = random.Random(11)
    for _ in range(50):
        first, second = rng.randbytes(rng.randrange(3000)), rng.randbytes(rng.randrange(3000))
        whole = zlib.crc32(first + second)
        crc1, crc2 = zlib.crc32(first), zlib.crc32(second)
        assert chunked_gzip.crc32_combine(crc1, crc2, len(second)) == whole
        # The arithmetic in Python, used where zlib's own cannot be loaded, agrees.
        if second:
            python = chunked_gzip._multiply(chunked_gzip._x_to_8_times(len(second)), crc1) ^ crc2
            assert python == whole
