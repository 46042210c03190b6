"""Masking of HTTP/2 in captures: secrets in header blocks, which HPACK
compresses (Huffman codes, table references) out of any pattern's reach.

`H2Masker.mask(event)` follows each direction of an HTTP/2 connection
frame by frame, as the HTTP/2 stage reads it, and returns the event's bytes
with every secret overwritten in place, the framing and HPACK state intact,
so a masked capture still replays:

* a header value whose name is a secret (Authorization, Cookie, X-Api-Key,
  ...) is masked whole, and a value holding a secret-looking part (``sk-...``,
  ``?key=...``) has that part masked;
* a Huffman-coded value is re-encoded with each masked character replaced
  by one of the same code length, so the bytes on the wire and the length
  the decoder's table counts stay what they were; a literal one gets ``*``;
* names are looked up in a copy of the sender's dynamic table; a value whose
  name that copy cannot know (a capture that began mid-connection, a header
  block split across reads, lost bytes) is masked whole, and the copy starts
  again empty, which never names an entry wrongly (see http2.py);
* DATA payloads get the patterns of plain captures, one frame at a time, so
  no mask runs over a frame header;
* where the frames are lost (bytes lost between frames, before a read that
  is whole frames again) a known HTTP/2 connection's bytes are masked whole:
  the HTTP/2 stage skips them there too.
"""
from __future__ import annotations

from collections import OrderedDict

from hpack.hpack import decode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from ..events import TlsData
from .http2 import MAX_FILL, PREFACE, frame_run, looks_like_frames, starts_connection

MAX_CONNS = 4096
_ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _fillers() -> bytes:
    """For each byte, a stand-in with a Huffman code of the same length."""
    by_length: dict[int, int] = {}
    for c in b"*x_0-" + bytes(range(256)):
        by_length.setdefault(REQUEST_CODES_LENGTH[c], c)
    return bytes(by_length[REQUEST_CODES_LENGTH[c]] for c in range(256))


_FILLER = _fillers()
_HEADER_FRAMES = (0x1, 0x5, 0x9)  # HEADERS, PUSH_PROMISE, CONTINUATION


class _Direction:
    __slots__ = ("h2", "synced", "head", "ftype", "flags", "left", "pre", "pre_need", "pad", "table", "block",
                 "spans_reads", "in_data")

    def __init__(self) -> None:
        self.h2 = False  # known to carry HTTP/2 frames
        self.synced = False
        self.head = b""  # frame header bytes gathered
        self.ftype = -1  # the frame being read, or -1 between frames
        self.flags = 0
        self.left = 0  # its payload bytes still to come
        self.pre = b""  # the bytes before a header block fragment (pad length, priority, promised id)
        self.pre_need = 0
        self.pad = 0  # padding at the end of the payload
        self.table = HeaderTable()
        self.block: list[tuple[int, int]] | None = None  # (start, end) in this read of the open header block
        self.spans_reads = False  # the open header block began in an earlier read
        self.in_data = False

    def lose_frames(self) -> None:
        self.synced = False
        self.head, self.ftype, self.left, self.block, self.spans_reads = b"", -1, 0, None, False
        self.table = HeaderTable()


class H2Masker:
    """One per capture: state per connection and direction."""

    def __init__(self) -> None:
        self._dirs: OrderedDict[tuple[int, int, str], _Direction] = OrderedDict()
        self._h2: set[tuple[int, int]] = set()

    def mask(self, ev: TlsData) -> bytes | None:
        """The event's bytes masked, or None when it is not HTTP/2 (the
        plain patterns apply then)."""
        conn = (ev.pid, ev.conn)
        if ev.dir == "close":
            self._h2.discard(conn)
            for direction in ("send", "recv"):
                self._dirs.pop((ev.pid, ev.conn, direction), None)
            return None
        if ev.dir != "send" and ev.dir != "recv":
            return None
        key = (ev.pid, ev.conn, ev.dir)
        d = self._dirs.get(key)
        if d is None:
            if len(self._dirs) >= MAX_CONNS:
                self._dirs.popitem(last=False)
            d = self._dirs[key] = _Direction()
            if ev.data or ev.gap:
                self._first(d, conn, ev.data)
        else:
            self._dirs.move_to_end(key)
        if not d.h2 and conn in self._h2:
            d.h2 = True  # the other direction said so; frames are found at the next whole read
        if not d.h2:
            return None
        out = bytearray(ev.data)
        try:
            if ev.gap:
                self._lose(d, ev.gap)
            if not d.synced and out:
                if looks_like_frames(ev.data):
                    d.synced = True
                else:
                    return b"*" * len(out)
            self._walk(d, out)
            if ev.truncated:
                self._lose(d, ev.truncated)
        except Exception:  # never let a secret through because of a bug
            d.lose_frames()
            return b"*" * len(out)
        return bytes(out)

    def _first(self, d: _Direction, conn: tuple[int, int], data: bytes) -> None:
        if data[:24] == PREFACE[:min(24, len(data))] and len(data) >= 24:
            d.h2 = d.synced = True
            d.head = b""
            d.pre = PREFACE  # skipped by _walk
        elif conn in self._h2 and starts_connection(data):  # the server's preface
            d.h2 = d.synced = True
        else:
            count, exact = frame_run(data)
            if exact or (count and starts_connection(data)):
                d.h2 = d.synced = True
        if d.h2:
            self._h2.add(conn)

    def _lose(self, d: _Direction, n: int) -> None:
        if d.synced and d.ftype == 0x0 and not d.flags & 0x8 and n <= d.left and n <= MAX_FILL:
            d.left -= n  # inside a DATA payload: the HTTP/2 stage fills it in and goes on
            return
        d.lose_frames()

    # -- frames ---------------------------------------------------------------------------
    def _walk(self, d: _Direction, out: bytearray) -> None:
        pos, n = 0, len(out)
        if d.pre is PREFACE:
            d.pre = b""
            pos = 24
        while pos < n:
            if d.ftype < 0:
                take = min(9 - len(d.head), n - pos)
                d.head += bytes(out[pos:pos + take])
                pos += take
                if len(d.head) < 9:
                    break
                self._frame_start(d, out)
                if d.left == 0:
                    self._frame_end(d, out)
                continue
            if d.pre_need:  # pad length, priority fields, promised stream id
                take = min(d.pre_need, n - pos)
                d.pre += bytes(out[pos:pos + take])
                d.pre_need -= take
                d.left -= take
                pos += take
                if d.pre_need == 0 and d.flags & 0x8:
                    d.pad = d.pre[0]
                    if d.pad > d.left:
                        d.lose_frames()
                        return
                if d.left == 0:
                    self._frame_end(d, out)
                continue
            body_left = d.left - d.pad
            if body_left > 0:
                take = min(body_left, n - pos)
                if d.ftype == 0x0:
                    _mask_plain(out, pos, pos + take)
                elif d.ftype in _HEADER_FRAMES and d.block is not None:
                    d.block.append((pos, pos + take))
                pos += take
                d.left -= take
            else:
                take = min(d.left, n - pos)  # padding
                pos += take
                d.left -= take
            if d.left == 0:
                self._frame_end(d, out)
        if d.block:  # a header block that goes on in the next read: what is here is masked whole
            for start, end in d.block:
                out[start:end] = b"*" * (end - start)
            d.block = []
            d.spans_reads = True

    def _frame_start(self, d: _Direction, out: bytearray) -> None:
        h = d.head
        d.head = b""
        d.ftype, d.flags, d.left = h[3], h[4], int.from_bytes(h[:3], "big")
        d.pre, d.pad, d.pre_need = b"", 0, 0
        d.in_data = d.ftype == 0x0
        if d.ftype == 0x0:
            d.pre_need = 1 if d.flags & 0x8 else 0
        elif d.ftype == 0x1:
            d.pre_need = (1 if d.flags & 0x8 else 0) + (5 if d.flags & 0x20 else 0)
        elif d.ftype == 0x5:
            d.pre_need = (1 if d.flags & 0x8 else 0) + 4
        d.pre_need = min(d.pre_need, d.left)
        if d.ftype in (0x1, 0x5):
            for start, end in d.block or ():  # a block that never ended: a protocol error
                out[start:end] = b"*" * (end - start)
            d.block, d.spans_reads = [], False
        elif d.ftype == 0x9 and d.block is None:
            d.block, d.spans_reads = [], True  # its start was not seen

    def _frame_end(self, d: _Direction, out: bytearray) -> None:
        ftype, flags = d.ftype, d.flags
        d.ftype = -1
        d.in_data = False
        if ftype not in _HEADER_FRAMES or not flags & 0x4 or d.block is None:
            return
        spans, d.block = d.block, None
        if d.spans_reads:
            for start, end in spans:
                out[start:end] = b"*" * (end - start)
            d.table = HeaderTable()  # it missed what the block inserted
            d.spans_reads = False
            return
        block = b"".join(bytes(out[s:e]) for s, e in spans)
        masked, ok = _mask_block(block, d.table)
        if not ok:
            d.table = HeaderTable()
        if masked != block:
            i = 0
            for start, end in spans:
                out[start:end] = masked[i:i + end - start]
                i += end - start


def _mask_plain(out: bytearray, start: int, end: int) -> None:
    from .redact import mask_bytes

    piece = bytes(out[start:end])
    masked = mask_bytes(piece)
    if masked is not piece:
        out[start:end] = masked


def _mask_block(block: bytes, table: HeaderTable) -> tuple[bytes, bool]:
    """A header block with its secret values masked, and whether every
    name in it was known (else the table copy is to start again)."""
    from .redact import is_secret_field, mask_bytes

    out = bytearray(block)
    ok = True
    i, n = 0, len(block)
    try:
        while i < n:
            b = block[i]
            if b & 0x80:  # an indexed field: no literal
                _, used = decode_integer(block[i:], 7)
                i += used
                continue
            if b & 0xE0 == 0x20:  # a table size update
                size, used = decode_integer(block[i:], 5)
                table.maxsize = size
                i += used
                continue
            indexing = b & 0xC0 == 0x40
            index, used = decode_integer(block[i:], 6 if indexing else 4)
            i += used
            name: bytes | None
            if index:
                try:
                    name = table.get_by_index(index)[0]
                except Exception:
                    name, ok = None, False
            else:
                name, _, i, _ = _string(block, i)
            value, start, i, huffman = _string(block, i)
            secret_name = name is None or is_secret_field(name.decode("latin-1"))
            masked = bytes(len(value)) if secret_name else mask_bytes(value)
            if secret_name or masked is not value:
                if secret_name:
                    masked = b"*" * len(value)
                if huffman:
                    new = _ENCODER.encode(_same_bits(value, masked))
                    if len(new) == i - start:
                        out[start:i] = new
                    else:
                        out[start:i] = b"\xff" * (i - start)  # not expected; never leave the secret
                        ok = False
                else:
                    out[start:i] = masked
            if indexing and name is not None:
                table.add(name, value)
            elif indexing:
                ok = False
    except Exception:  # what cannot be read is masked from where it stops
        out[i:] = b"*" * (n - i)
        return bytes(out), False
    return bytes(out), ok


def _same_bits(value: bytes, masked: bytes) -> bytes:
    """`value` with each run that `masked` masks replaced by a run of as many
    characters whose Huffman codes add up to as many bits: the same encoded
    length, and nothing of the secret's characters (not even their code
    lengths) left in it."""
    out = bytearray(value)
    i, n = 0, len(value)
    while i < n:
        if masked[i] != 0x2A:  # ("*" that was there already is refilled too: harmless)
            i += 1
            continue
        j = i
        while j < n and masked[j] == 0x2A:
            j += 1
        out[i:j] = _filler_run(value[i:j])
        i = j
    return bytes(out)


def _filler_run(run: bytes) -> bytes:
    """As many characters as `run`, with as many Huffman bits in all."""
    bits = sum(REQUEST_CODES_LENGTH[c] for c in run)
    n = len(run)
    extra = bits - 5 * n  # over all '0' (5 bits); '_' adds 1, 'x' 2, '*' 3
    if 0 <= extra <= 3 * n:
        stars, rest = divmod(extra, 3)
        return b"*" * stars + (b"_" if rest == 1 else b"x" if rest == 2 else b"") + b"0" * (n - stars - (rest > 0))
    return bytes(_FILLER[c] for c in run)  # long codes: each replaced by one as long


def _string(block: bytes, i: int) -> tuple[bytes, int, int, bool]:
    """A string literal at `i`: (decoded, start of its bytes, end, Huffman)."""
    huffman = bool(block[i] & 0x80)
    length, used = decode_integer(block[i:], 7)
    start = i + used
    end = start + length
    if end > len(block):
        raise ValueError("a string past the end of the header block")
    raw = block[start:end]
    return (decode_huffman(raw) if huffman else raw), start, end, huffman
