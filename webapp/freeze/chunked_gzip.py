"""Gzip in chunks, so that a rebuild recompresses only the chunks that changed.

The feed is the largest file of the site (it grows with every episode);
compressing it whole at level 9 costs more than the rest of a one-episode
rebuild. Compressed the way pigz does it, it need not be: each
chunk is deflated on its own, primed with the 32 KiB before it as a preset
dictionary (what a decompressor has in its window at that point anyway), and
ends byte-aligned (a sync flush), so the chunks' outputs laid end to end form
one ordinary gzip stream. A chunk's bytes then depend only on itself and the
32 KiB before it, and a chunk whose digest is the same as in the last build
is copied from the last build's file::

    gz = compress([head, middle, tail])                  # GzipChunks(data=b"\\x1f\\x8b…", …)
    reusable = gz.reusable()                              # digest -> deflated bytes
    again = compress([head, new_middle, tail], reusable)  # deflates new_middle only, unless
                                                          # tail's 32 KiB before it moved

``compress`` is ``split``, ``deflate`` for each chunk not reused, and
``assemble``; a caller with threads runs the deflates on them (zlib releases
the GIL while it works, and a chunk's deflate is one call). The layout
records each chunk's size and CRC-32 too, so a file can be assembled from
copied chunks without reading their bytes: the trailer's CRC of the whole is
``crc32_combine`` of the chunks' (webapp/freeze/splice.py does that).

The output decompresses with any gzip reader; it is a few bytes larger than a
one-piece ``gzip.compress`` (an empty block per chunk, fresh Huffman tables),
and is the same bytes for the same chunks on every build.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

LEVEL = 9
#: Deflate's window: how far back a match can reach, so how much of the
#: previous chunk a chunk's compression depends on.
WINDOW = 32 * 1024
#: No file name, mtime 0, "maximum compression", OS 3 (Unix, as zlib itself writes it).
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
#: An empty final block: the chunks' blocks are all non-final.
FINAL_BLOCK = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
#: CRC-32 and size of the uncompressed data.
TRAILER_SIZE = 8


class ChunkRecord(NamedTuple):
    """What a gzip file's layout says of one chunk."""

    digest: str
    #: its deflate blocks' length in the file
    deflated: int
    #: the uncompressed chunk's size and CRC-32
    size: int
    crc: int


@dataclass(frozen=True)
class GzipChunks:
    """A gzip file, and the record of each of its chunks."""

    data: bytes
    chunks: list[ChunkRecord]

    def reusable(self) -> dict[str, bytes]:
        """Each chunk's deflated bytes, by digest: what ``compress`` may copy.

        Raises ValueError if the layout does not tile the file exactly.
        """
        reusable = {}
        offset = len(HEADER)
        for chunk in self.chunks:
            reusable[chunk.digest] = self.data[offset : offset + chunk.deflated]
            offset += chunk.deflated
        if offset + len(FINAL_BLOCK) + TRAILER_SIZE != len(self.data):
            raise ValueError("the chunk layout does not describe this gzip file")
        return reusable


@dataclass(frozen=True)
class Chunk:
    """A chunk to compress: its bytes, the 32 KiB before them, and the digest of both."""

    data: bytes
    window: bytes
    digest: str


def split(chunks: Sequence[bytes]) -> list[Chunk]:
    """Each chunk with the window it is compressed against."""
    split_chunks = []
    window = b""
    for data in chunks:
        split_chunks.append(Chunk(data, window, chunk_digest(window, data)))
        window = data[-WINDOW:] if len(data) >= WINDOW else (window + data)[-WINDOW:]
    return split_chunks


def deflate(chunk: Chunk) -> bytes:
    """The chunk's deflate blocks: none final, the last one ending on a byte boundary."""
    compressor = (
        zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=chunk.window)
        if chunk.window
        else zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    )
    return compressor.compress(chunk.data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def assemble(chunks: Sequence[Chunk], deflated: Sequence[bytes]) -> GzipChunks:
    """The gzip file of ``chunks``, given each one's ``deflate`` output."""
    layout = [
        ChunkRecord(chunk.digest, len(data), len(chunk.data), zlib.crc32(chunk.data))
        for chunk, data in zip(chunks, deflated, strict=True)
    ]
    body = b"".join([HEADER, *deflated, FINAL_BLOCK, trailer(layout)])
    return GzipChunks(body, layout)


def compress(chunks: Sequence[bytes], reusable: Mapping[str, bytes] | None = None) -> GzipChunks:
    """One gzip file of ``chunks`` in order, deflating only those not in ``reusable``."""
    reusable = reusable or {}
    split_chunks = split(chunks)
    return assemble(
        split_chunks, [reusable.get(chunk.digest) or deflate(chunk) for chunk in split_chunks]
    )


def digest_of(digests: Iterable[str]) -> str:
    """A digest of a file's bytes, from its chunks' digests (which cover every byte)."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:32]


def chunk_digest(window: bytes, chunk: bytes) -> str:
    """The digest of a chunk's bytes and its window: equal digests, equal deflate output."""
    # SHA-256: with CPU support, twice as fast as BLAKE2b (see output.content_digest).
    # zlib's version too: another zlib may deflate the same bytes differently,
    # and a copied chunk must be what this one would make.
    hasher = hashlib.sha256(f"deflate-{LEVEL}-zlib-{zlib.ZLIB_RUNTIME_VERSION}\0".encode())
    hasher.update(len(window).to_bytes(4, "big"))
    hasher.update(window)
    hasher.update(chunk)
    return hasher.hexdigest()[:32]


def trailer(chunks: Sequence[ChunkRecord]) -> bytes:
    """The gzip trailer of a file of ``chunks``: the CRC-32 and size of the whole."""
    crc = size = 0
    for chunk in chunks:
        crc = crc32_combine(crc, chunk.crc, chunk.size)
        size += chunk.size
    return struct.pack("<II", crc, size & 0xFFFFFFFF)


def crc32_combine(crc1: int, crc2: int, size2: int) -> int:
    """The CRC-32 of two pieces end to end, from each one's CRC-32 and the second's size.

    zlib's crc32_combine, which Python's zlib module does not expose: from the
    zlib the interpreter links to if it can be loaded, else the same
    arithmetic in Python (zlib 1.2.12's, 32 polynomial steps per bit of
    ``size2``).
    """
    if size2 == 0:
        return crc1
    combine = _zlib_crc32_combine()
    if combine is not None:
        return combine(crc1, crc2, size2) & 0xFFFFFFFF
    return _multiply(_x_to_8_times(size2), crc1) ^ crc2


@functools.cache
def _zlib_crc32_combine() -> Callable[[int, int, int], int] | None:
    try:
        library = ctypes.CDLL("libz.so.1")
        combine = library.crc32_combine64
    except (OSError, AttributeError):
        return None
    combine.restype = ctypes.c_ulong
    combine.argtypes = (ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int64)
    # Checked once against the definition, so a library that disagrees is never used.
    if combine(zlib.crc32(b"a"), zlib.crc32(b"bc"), 2) & 0xFFFFFFFF != zlib.crc32(b"abc"):
        return None
    return combine


#: CRC-32's polynomial, bit-reversed.
_POLYNOMIAL = 0xEDB88320


def _multiply(a: int, b: int) -> int:
    """a times b modulo the polynomial (zlib's multmodp)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if a & (m - 1) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _POLYNOMIAL if b & 1 else b >> 1


def _x_powers() -> list[int]:
    powers = [1 << 30]  # x^1
    for _ in range(31):
        powers.append(_multiply(powers[-1], powers[-1]))
    return powers


_X_POWERS = _x_powers()  # x^(2^n), n = 0..31


def _x_to_8_times(size: int) -> int:
    """x^(8 * size) modulo the polynomial (zlib's x2nmodp(size, 3))."""
    power, k = 1 << 31, 3
    while size:
        if size & 1:
            power = _multiply(_X_POWERS[k & 31], power)
        size >>= 1
        k += 1
    return power
