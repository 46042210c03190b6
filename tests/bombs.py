"""Decompression bombs: small bodies that inflate to `size` bytes of zeros.

Each is built without holding `size` bytes in memory, in well under a second
for a GiB, so the tests can afford real ratios (zstd 32768:1, brotli and
gzip as their compressors reach).
"""
from __future__ import annotations

import struct
import zlib

MiB = 1 << 20
_ZEROS = bytes(MiB)


def gzip_bomb(size: int) -> bytes:
    """One gzip member (valid CRC and length) of `size` zero bytes, `size` a multiple of 1 MiB >= 3 MiB."""
    n = size // MiB
    assert n >= 3 and size % MiB == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the compressor starts afresh, byte-aligned: every
    # further MiB compresses to the same bytes, so they can be repeated.
    again = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    last = co.compress(_ZEROS) + co.flush()
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(_ZEROS, crc)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return head + first + again * (n - 2) + last + struct.pack("<II", crc, size & 0xFFFFFFFF)


def deflate_bomb(size: int) -> bytes:
    """HTTP "deflate" (zlib-wrapped) of `size` zero bytes."""
    n = size // MiB
    assert n >= 3 and size % MiB == 0
    co = zlib.compressobj(9, zlib.DEFLATED, 15)
    first = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    last = co.compress(_ZEROS) + co.flush()
    # zlib's trailer is the Adler-32 of the data; recompute it over all of it
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(_ZEROS, adler)
    return first + again * (n - 2) + last[:-4] + struct.pack(">I", adler)


def zstd_bomb(size: int) -> bytes:
    """One zstd frame of 128 KiB RLE blocks: 4 bytes of input per 128 KiB of output."""
    block = 128 << 10
    n = size // block
    assert n >= 1 and size % block == 0
    # no content size, no checksum; a 128 KiB window (exponent 7)
    frame = struct.pack("<I", 0xFD2FB528) + bytes([0x00, 7 << 3])
    rle = struct.pack("<I", (1 << 1) | (block << 3))[:3] + b"\0"
    last = struct.pack("<I", 1 | (1 << 1) | (block << 3))[:3] + b"\0"
    return frame + rle * (n - 1) + last


def brotli_bomb(size: int) -> bytes:
    import brotli

    c = brotli.Compressor(quality=2)
    out = [c.process(_ZEROS) for _ in range(size // MiB)]
    out.append(c.process(bytes(size % MiB)))
    out.append(c.finish())
    return b"".join(out)


BOMBS = {"gzip": gzip_bomb, "deflate": deflate_bomb, "zstd": zstd_bomb, "br": brotli_bomb}
