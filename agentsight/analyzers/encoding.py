"""Incremental Content-Encoding decoders (gzip, deflate, br, zstd), bounded.

Every decoder is told how many bytes it may still produce, and inflates no
more than that plus one output step of its library (128 KiB at most),
however small the input: a 3 KB brotli body that would inflate to 4 GiB
costs what the limit allows.  (For a moment, while the library joins its
steps into the bytes returned, one call holds up to twice its output.)
What does not fit is cut, said (:class:`DecompressionLimit`) and counted
(``skipped.decompression_limit``).
"""
from __future__ import annotations

import zlib
from collections.abc import MutableMapping
from typing import IO, Callable, Protocol, cast

from .budget import BodyBudget, BodyHold

try:
    import brotli
except ImportError:  # pragma: no cover - a dependency
    brotli = None
try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency
    zstandard = None  # type: ignore[assignment]

DEFAULT_LIMIT = 256 << 20
# The output step of the bounded loops: small enough that overshooting the
# room by one step is harmless, large enough that a legitimate body takes
# few calls.
STEP = 64 << 10
# RFC 9659: zstd as an HTTP content coding uses windows of at most 8 MiB; a
# frame that asks for more (up to 2 GiB) is refused instead of allocated.
ZSTD_MAX_WINDOW = 8 << 20


class DecodeError(Exception):
    pass


class DecompressionLimit(DecodeError):
    """The decoded body reached its limit, and the rest of it is not decoded.

    ``output`` holds the decoded bytes of the call that reached the limit, up
    to it exactly; ``limit`` is the body's decoded size in all; ``reason``
    says which limit it was: the one of a body, or the shared budget.
    """

    def __init__(self, encoding: str, limit: int, reason: str, output: bytes) -> None:
        self.encoding = encoding
        self.limit = limit
        self.reason = reason
        self.output = output
        super().__init__(f"{encoding} body cut at {_size(limit)} decoded: {reason}; the rest is not decoded")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


class _Stage(Protocol):
    """One content coding undone: at most ``room`` bytes out, or _Full."""

    def feed(self, data: bytes, room: int) -> bytes: ...

    def flush(self, room: int) -> bytes: ...


class _Full(Exception):
    """A stage had more output than its room; ``output`` is what fit."""

    def __init__(self, output: bytes) -> None:
        self.output = output


def _fit(parts: list[bytes], n: int, room: int) -> _Full:
    """The parts (``n`` bytes in all, more than ``room``) cut to the room:
    only the last is cut before the join, so no more than the room is copied."""
    over = n - room
    while parts and over >= len(parts[-1]):
        over -= len(parts.pop())
    if over:
        parts[-1] = parts[-1][:len(parts[-1]) - over]
    return _Full(b"".join(parts))


class _Identity:
    def feed(self, data: bytes, room: int) -> bytes:
        if len(data) > room:
            raise _Full(data[:room])
        return data

    def flush(self, room: int) -> bytes:
        return b""


class _Zlib:
    """gzip (wbits 31), or HTTP "deflate": zlib-wrapped or, wrongly but often, raw."""

    __slots__ = ("_gzip", "_d", "_head")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._d: "zlib._Decompress | None" = zlib.decompressobj(31) if gzip else None
        self._head = b""

    def feed(self, data: bytes, room: int) -> bytes:
        d = self._d
        if d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            is_zlib = (b0 & 0x0F) == 8 and ((b0 << 8) | b1) % 31 == 0
            d = self._d = zlib.decompressobj(15 if is_zlib else -15)
            data, self._head = self._head, b""
        try:
            if room:
                out = d.decompress(data, room)
                # Filled exactly: full if more was to come (input left, or
                # output zlib holds back), which one more byte tells.
                if len(out) == room and not d.eof and (d.unconsumed_tail or d.decompress(b"", 1)):
                    raise _Full(out)
            else:  # a max_length of 0 would mean no limit
                if d.decompress(data, 1):
                    raise _Full(b"")
                out = b""
            if not (self._gzip and d.eof and d.unused_data):
                return out
            # concatenated gzip members
            parts = [out]
            n = len(out)
            while d.eof and d.unused_data:
                rest = d.unused_data
                d = self._d = zlib.decompressobj(31)
                more = d.decompress(rest, room - n + 1)
                parts.append(more)
                n += len(more)
                if n > room:
                    raise _fit(parts, n, room)
            return b"".join(parts)
        except zlib.error as e:
            raise DecodeError(str(e)) from None

    def flush(self, room: int) -> bytes:
        if self._d is None:
            return b""
        try:
            out = self._d.flush(room + 1)
        except zlib.error as e:  # pragma: no cover
            raise DecodeError(str(e)) from None
        if len(out) > room:
            raise _Full(out[:room])
        return out


# The brotli binding's output buffer starts with one 32 KiB block (less its
# header); a shorter output means the decoder stopped for want of input.
_BROTLI_FIRST_BLOCK = (32 << 10) - 16


class _Brotli:
    __slots__ = ("_d",)

    def __init__(self) -> None:
        if brotli is None:
            raise DecodeError("brotli not installed")
        if not hasattr(brotli.Decompressor, "can_accept_more_data"):
            raise DecodeError(f"brotli {getattr(brotli, '__version__', '?')} cannot bound its output: "
                              "install brotli>=1.2")
        self._d = brotli.Decompressor()

    def feed(self, data: bytes, room: int, drain: bool = False) -> bytes:
        # The output limit only stops the buffer's growth: a call may end one
        # growth step past it, or with its buffer full and output still
        # pending inside the decoder (which it reports only for pending
        # input).  So: small steps, and call again while a call filled at
        # least its first buffer block; one that did not was not short of
        # room.  flush() drains whatever is left.
        d = self._d
        try:
            out: bytes = d.process(data, output_buffer_limit=room + 1 if room < STEP else STEP)
            n = len(out)
            if n < _BROTLI_FIRST_BLOCK and not drain:
                if n > room:
                    raise _Full(out[:room])
                return out
            parts: list[bytes] = []
            while out:
                parts.append(out)
                if n > room:
                    raise _fit(parts, n, room)
                if len(out) < _BROTLI_FIRST_BLOCK and not drain:
                    break
                out = d.process(b"", output_buffer_limit=min(room - n + 1, STEP))
                n += len(out)
            if not d.can_accept_more_data():  # input left, yet no output made
                raise DecodeError("brotli decoder made no progress")
        except brotli.error as e:
            raise DecodeError(str(e)) from None
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def flush(self, room: int) -> bytes:
        return self.feed(b"", room, True)


class _Sink:
    """Where zstd writes its output, one step at a time: stops it when full."""

    __slots__ = ("parts", "n", "room")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.n = 0
        self.room = 0

    def write(self, b: bytes) -> int:
        self.parts.append(b)
        self.n += len(b)
        if self.n > self.room:
            raise _fit(self.parts, self.n, self.room)
        return len(b)


class _Zstd:
    __slots__ = ("_sink", "_w")

    def __init__(self) -> None:
        if zstandard is None:
            raise DecodeError("zstandard not installed")
        self._sink = _Sink()
        # A stream writer hands each output step to the sink as it is made
        # (a decompressobj would join all of one call's output first), and
        # decodes frame after frame.
        self._w = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_writer(
            cast(IO[bytes], self._sink), write_size=STEP)

    def feed(self, data: bytes, room: int) -> bytes:
        s = self._sink
        s.parts = []
        s.n = 0
        s.room = room
        try:
            self._w.write(data)
        except zstandard.ZstdError as e:
            raise DecodeError(str(e)) from None
        parts = s.parts
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def flush(self, room: int) -> bytes:
        return b""


_FACTORIES: dict[str, Callable[[], _Stage]] = {
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
    decoded size of this body; ``budget``, when given, caps it together with
    every other body that shares the budget: the decoded bytes stay reserved
    there until :meth:`release`, which the owner calls when it drops them.

    The call that reaches a cap raises :class:`DecompressionLimit`, whose
    ``output`` is what was decoded up to the cap; later calls return nothing
    and add their input to ``cut_bytes``.  With ``stats`` (a Counter), the
    cut is counted there: ``skipped.decompression_limit`` (bodies) and
    ``skipped.decompression_limit_bytes`` (compressed bytes left undecoded,
    from the piece that reached the cap on).
    """

    __slots__ = ("_chain", "_size", "_limit", "_hold", "_stats", "_names", "active", "cut_bytes")

    def __init__(self, encoding: str | None, limit: int = DEFAULT_LIMIT, *,
                 budget: BodyBudget | None = None,
                 stats: MutableMapping[str, int] | None = None) -> None:
        names = [n.strip().lower() for n in (encoding or "").split(",") if n.strip()]
        chain: list[_Stage] = []
        for n in reversed(names):  # the last applied encoding is undone first
            f = _FACTORIES.get(n)
            if f is None:
                raise DecodeError(f"unsupported content-encoding {n!r}")
            if n != "identity":
                chain.append(f())
        self._chain = chain
        self._names = ", ".join(names)
        self.active = bool(chain)  # False: identity, feed() may be skipped
        self._size = 0
        self._limit = limit
        self._hold: BodyHold | None = budget.hold() if budget is not None else None
        self._stats = stats
        self.cut_bytes = -1  # >= 0 once cut

    def _room(self) -> tuple[int, bool]:
        """(bytes this body may still produce, whether the budget is what binds)."""
        room = self._limit - self._size
        h = self._hold
        if h is not None:
            left = h.available()
            if left < room:
                return max(0, left), True
        return room, False

    def feed(self, data: bytes) -> bytes:
        if self.cut_bytes >= 0:
            self._count_cut(len(data))
            return b""
        if self._hold is None and len(self._chain) == 1:  # the usual case, kept short
            try:
                out = self._chain[0].feed(data, self._limit - self._size)
            except _Full as f:
                return self._reached(f.output, len(data), False)
            self._size += len(out)
            return out
        room, by_budget = self._room()
        return self._run(data, room, by_budget, False)

    def flush(self) -> bytes:
        if self.cut_bytes >= 0:
            return b""
        room, by_budget = self._room()
        return self._run(b"", room, by_budget, True)

    def _run(self, data: bytes, room: int, by_budget: bool, flush: bool) -> bytes:
        full = False
        out = data
        for d in self._chain:
            try:
                if out:
                    out = d.feed(out, room)
                if flush:
                    out += d.flush(room - len(out))
            except _Full as f:
                out = f.output
                full = True
            if not out and not flush:
                break
        if full:
            return self._reached(out, len(data), by_budget)
        self._take(out)
        return out

    def _take(self, out: bytes) -> None:
        n = len(out)
        self._size += n
        if self._hold is not None and n:
            self._hold.reserve(n)  # fits: the room was what the budget had left

    def _reached(self, out: bytes, fed: int, by_budget: bool) -> bytes:
        """A cap is reached with ``out``, the output that fit: cut, count, say so."""
        self._take(out)
        self.cut_bytes = 0
        self._count_cut(fed)
        st = self._stats
        if st is not None:
            st["skipped.decompression_limit"] = st.get("skipped.decompression_limit", 0) + 1
        if by_budget:
            assert self._hold is not None  # the budget bound: there is one
            b = self._hold.budget
            reason = f"the memory budget of all buffered bodies ({_size(b.total)}) is used up"
            limit = self._size
        else:
            reason = "the limit of one body"
            limit = self._limit
        raise DecompressionLimit(self._names, limit, reason, out)

    def _count_cut(self, n: int) -> None:
        self.cut_bytes += n
        st = self._stats
        if st is not None and n:
            k = "skipped.decompression_limit_bytes"
            st[k] = st.get(k, 0) + n

    def release(self) -> None:
        """Gives the decoded bytes back to the budget: their owner dropped them."""
        if self._hold is not None:
            self._hold.release()


def decode_all(data: bytes, encoding: str | None, limit: int = DEFAULT_LIMIT, *,
               budget: BodyBudget | None = None,
               stats: MutableMapping[str, int] | None = None) -> bytes:
    """One whole body.  With ``budget`` the output fits in what it has left,
    but nothing stays reserved: the caller reserves what it keeps."""
    d = BodyDecoder(encoding, limit, budget=budget, stats=stats)
    try:
        out = d.feed(data)
        return out + d.flush()
    finally:
        d.release()
