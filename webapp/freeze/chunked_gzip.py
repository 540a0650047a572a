"""Gzip in chunks, so that a rebuild recompresses only the chunks that changed.

The feed is 1.2 MB; compressing it at level 9 costs more than the rest of a
one-episode rebuild. Compressed the way pigz does it, it need not be: each
chunk is deflated on its own, primed with the 32 KiB before it as a preset
dictionary (what a decompressor has in its window at that point anyway), and
ends byte-aligned (a sync flush), so the chunks' outputs laid end to end form
one ordinary gzip stream. A chunk's bytes then depend only on itself and the
32 KiB before it, and a chunk whose digest is the same as in the last build
is copied from the last build's file::

    gz = compress([head, middle, tail])                  # GzipChunks(data=b"\\x1f\\x8b…", chunks=[…])
    reusable = gz.reusable()                              # digest -> deflated bytes
    again = compress([head, new_middle, tail], reusable)  # deflates new_middle only, unless
                                                          # tail's 32 KiB before it moved

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
#: No file name, mtime 0, "maximum compression", Unix: as gzip.compress(data, 9, mtime=0) writes here.
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
#: An empty final block: the chunks' blocks are all non-final.
FINAL_BLOCK = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


@dataclass(frozen=True)
class GzipChunks:
    """A gzip file, and the digest and deflated length of each of its chunks."""

    data: bytes
    chunks: list[tuple[str, int]]

    def reusable(self) -> dict[str, bytes]:
        """Each chunk's deflated bytes, by digest: what ``compress`` may copy."""
        reusable = {}
        offset = len(HEADER)
        for digest, length in self.chunks:
            reusable[digest] = self.data[offset:offset + length]
            offset += length
        return reusable


def compress(chunks: Sequence[bytes], reusable: Mapping[str, bytes] | None = None) -> GzipChunks:
    """One gzip file of ``chunks`` in order, deflating only those not in ``reusable``."""
    reusable = reusable or {}
    deflated, layout = [], []
    window = b""
    crc = size = 0
    for chunk in chunks:
        digest = _digest(window, chunk)
        data = reusable.get(digest)
        if data is None:
            data = _deflate(chunk, window)
        deflated.append(data)
        layout.append((digest, len(data)))
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        window = chunk[-WINDOW:] if len(chunk) >= WINDOW else (window + chunk)[-WINDOW:]
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return GzipChunks(b"".join([HEADER, *deflated, FINAL_BLOCK, trailer]), layout)


def _digest(window: bytes, chunk: bytes) -> str:
    hasher = hashlib.blake2b(f"deflate-{LEVEL}\0".encode(), digest_size=16)
    hasher.update(len(window).to_bytes(4, "big"))
    hasher.update(window)
    hasher.update(chunk)
    return hasher.hexdigest()


def _deflate(chunk: bytes, window: bytes) -> bytes:
    options = {"zdict": window} if window else {}
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, **options)
    return compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
