"""Gzip in chunks, so that a rebuild recompresses only the chunks that changed.

The feed is 1.2 MB; compressing it at level 9 costs more than the rest of a
one-episode rebuild. Compressed the way pigz does it, it need not be: each
chunk is deflated on its own, primed with the 32 KiB before it as a preset
dictionary (what a decompressor has in its window at that point anyway), and
ends byte-aligned (a sync flush), so the chunks' outputs laid end to end form
one ordinary gzip stream. A chunk's bytes then depend only on itself and the
32 KiB before it, and a chunk whose digest is the same as in the last build
is copied from the last build's file::

    gz = compress([head, middle, tail])                  # GzipChunks(data=b"…", chunks=[…])
    reusable = gz.reusable()                              # digest -> deflated bytes
    again = compress([head, new_middle, tail], reusable)  # deflates new_middle only, unless
                                                          # tail's 32 KiB before it moved

``compress`` is ``split``, ``deflate`` for each chunk not reused, and
``assemble``; a caller with threads runs the deflates on them (zlib releases
the GIL while it works, and a chunk's deflate is one call).

The output decompresses with any gzip reader; it is a few bytes larger than a
one-piece ``gzip.compress`` (an empty block per chunk, fresh Huffman tables),
and is the same bytes for the same chunks on every build.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class GzipChunks:
    """A gzip file, and the digest and deflated length of each of its chunks."""

    data: bytes
    chunks: list[tuple[str, int]]

    def reusable(self) -> dict[str, bytes]:
        """Each chunk's deflated bytes, by digest: what ``compress`` may copy.

        Raises ValueError if the layout does not tile the file exactly.
        """
        reusable = {}
        offset = len(HEADER)
        for digest, length in self.chunks:
            reusable[digest] = self.data[offset : offset + length]
            offset += length
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
        split_chunks.append(Chunk(data, window, _digest(window, data)))
        window = data[-WINDOW:] if len(data) >= WINDOW else (window + data)[-WINDOW:]
    return split_chunks


def deflate(chunk: Chunk) -> bytes:
    """The chunk's deflate blocks: none final, the last one ending on a byte boundary."""
    if chunk.window:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=chunk.window)
    else:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(chunk.data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def assemble(chunks: Sequence[Chunk], deflated: Sequence[bytes]) -> GzipChunks:
    """The gzip file of ``chunks``, given each one's ``deflate`` output."""
    crc = size = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk.data, crc)
        size += len(chunk.data)
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    layout = [(chunk.digest, len(data)) for chunk, data in zip(chunks, deflated, strict=True)]
    return GzipChunks(b"".join([HEADER, *deflated, FINAL_BLOCK, trailer]), layout)


def compress(chunks: Sequence[bytes], reusable: Mapping[str, bytes] | None = None) -> GzipChunks:
    """One gzip file of ``chunks`` in order, deflating only those not in ``reusable``."""
    reusable = reusable or {}
    split_chunks = split(chunks)
    return assemble(
        split_chunks, [reusable.get(chunk.digest) or deflate(chunk) for chunk in split_chunks]
    )


def digest_of(chunks: Sequence[Chunk]) -> str:
    """A digest of the chunks' bytes, from their digests (which cover every byte)."""
    return hashlib.sha256("".join(chunk.digest for chunk in chunks).encode()).hexdigest()[:32]


def _digest(window: bytes, chunk: bytes) -> str:
    # SHA-256: with CPU support, twice as fast as BLAKE2b (see output.content_digest).
    # zlib's version too: another zlib may deflate the same bytes differently,
    # and a copied chunk must be what this one would make.
    hasher = hashlib.sha256(f"deflate-{LEVEL}-zlib-{zlib.ZLIB_RUNTIME_VERSION}\0".encode())
    hasher.update(len(window).to_bytes(4, "big"))
    hasher.update(window)
    hasher.update(chunk)
    return hasher.hexdigest()[:32]
