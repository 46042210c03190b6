"""Incremental Content-Encoding decoders (gzip, deflate, br, zstd)."""
from __future__ import annotations

import zlib
from typing import Callable

try:
    import brotli
except ImportError:  # pragma: no cover - a dependency
    brotli = None  # type: ignore[assignment]
try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency
    zstandard = None  # type: ignore[assignment]


class DecodeError(Exception):
    pass


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zlib:
    """gzip (wbits 31), or HTTP "deflate": zlib-wrapped or, wrongly but often, raw."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._d: "zlib._Decompress | None" = zlib.decompressobj(31) if gzip else None
        self._head = b""

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            is_zlib = (b0 & 0x0F) == 8 and ((b0 << 8) | b1) % 31 == 0
            self._d = zlib.decompressobj(15 if is_zlib else -15)
            data, self._head = self._head, b""
        try:
            out = self._d.decompress(data)
            # concatenated gzip members
            while self._gzip and self._d.eof and self._d.unused_data:
                rest = self._d.unused_data
                self._d = zlib.decompressobj(31)
                out += self._d.decompress(rest)
            return out
        except zlib.error as e:
            raise DecodeError(str(e)) from None

    def flush(self) -> bytes:
        if self._d is None:
            return b""
        try:
            return self._d.flush()
        except zlib.error as e:  # pragma: no cover
            raise DecodeError(str(e)) from None


class _Brotli:
    def __init__(self) -> None:
        if brotli is None:
            raise DecodeError("brotli not installed")
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            return self._d.process(data)
        except brotli.error as e:
            raise DecodeError(str(e)) from None

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self) -> None:
        if zstandard is None:
            raise DecodeError("zstandard not installed")
        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def feed(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zstandard.ZstdError as e:
            raise DecodeError(str(e)) from None

    def flush(self) -> bytes:
        return b""


_FACTORIES: dict[str, Callable[[], object]] = {
    "gzip": lambda: _Zlib(True),
    "x-gzip": lambda: _Zlib(True),
    "deflate": lambda: _Zlib(False),
    "br": _Brotli,
    "zstd": _Zstd,
    "identity": _Identity,
}


class BodyDecoder:
    """Decodes a body that arrives in pieces; ``encoding`` is the header value.

    Unknown encodings raise DecodeError at construction.  ``limit`` caps the
    decoded size (a decompression bomb raises DecodeError).
    """

    __slots__ = ("_chain", "_size", "_limit", "active")

    def __init__(self, encoding: str | None, limit: int = 256 << 20) -> None:
        names = [n.strip().lower() for n in (encoding or "").split(",") if n.strip()]
        chain = []
        for n in reversed(names):  # the last applied encoding is undone first
            f = _FACTORIES.get(n)
            if f is None:
                raise DecodeError(f"unsupported content-encoding {n!r}")
            if n != "identity":
                chain.append(f())
        self._chain = chain
        self.active = bool(chain)  # False: identity, feed() may be skipped
        self._size = 0
        self._limit = limit

    def feed(self, data: bytes) -> bytes:
        for d in self._chain:
            if not data:
                break
            data = d.feed(data)  # type: ignore[attr-defined]
        self._size += len(data)
        if self._size > self._limit:
            raise DecodeError("decoded body too large")
        return data

    def flush(self) -> bytes:
        out = b""
        for d in self._chain:
            if out:
                out = d.feed(out)  # type: ignore[attr-defined]
            out += d.flush()  # type: ignore[attr-defined]
        return out


def decode_all(data: bytes, encoding: str | None, limit: int = 256 << 20) -> bytes:
    d = BodyDecoder(encoding, limit)
    return d.feed(data) + d.flush()
