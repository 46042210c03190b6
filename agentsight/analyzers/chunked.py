"""Incremental decoder of a chunked response body (RFC 9112 section 7.1).

httptools or h11 parses every message head; the HTTP stage then frames
chunked bodies with this decoder, because h11's per-read event machinery
dominated the cost of streamed (SSE) responses, which arrive as one small
chunk per read.

It accepts exactly what h11's chunked reader accepts, and stops at the last
chunk: a body without trailer fields ends here (``DONE``); trailer fields,
which are rare, go back to h11 (``TRAILER``) so that h11 validates them.
"""
from __future__ import annotations

import re

# chunk-size [ chunk-ext ] OWS CRLF, as lenient as h11 (extensions are not parsed)
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")

MORE, DONE, TRAILER, BAD = "more", "done", "trailer", "bad"


class ChunkedDecoder:
    """``feed(data) -> (body, status, rest)``:

    * ``body``: the chunk data found in ``data`` (possibly empty);
    * ``status`` ``MORE``: the body goes on, ``rest`` is empty;
    * ``DONE``: the message ended, ``rest`` is what follows it (the next message);
    * ``TRAILER``: the last chunk has trailer fields; ``rest`` starts at the
      last-chunk line (``0...\\r\\n``) and is for h11 to parse from there;
    * ``BAD``: malformed framing (where h11 raises a protocol error); ``body``
      holds the data before the error.

    After anything but ``MORE`` the decoder must not be fed again.
    """

    __slots__ = ("_left", "_crlf", "_pending", "_last", "_max_line")

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._left = 0          # chunk-data bytes still to come in the current chunk
        self._crlf = b""        # the part of the CRLF after chunk data still expected
        self._pending = b""     # an incomplete size line (or last chunk), kept for the next feed
        self._last = 0          # > 0: _pending starts with the last-chunk line, this long
        self._max_line = max_line  # h11 gives up on an incomplete line this long

    def feed(self, data: bytes) -> tuple[bytes, str, bytes]:
        left = self._left
        if left:
            if len(data) < left and not self._crlf:  # inside a long chunk
                self._left = left - len(data)
                return data, MORE, b""
        elif not self._crlf and not self._pending:
            # The common case of a stream: exactly one whole chunk per read.
            eol = data.find(b"\r\n")
            if eol > 0:
                m = _SIZE_LINE.fullmatch(data, 0, eol + 2)
                if m is not None:
                    start = eol + 2
                    end = start + int(m.group(1), 16)
                    if end > start and len(data) == end + 2 and data.endswith(b"\r\n"):
                        return data[start:end], MORE, b""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        n = len(data)
        pos = 0
        pieces: list[bytes] = []
        status = MORE
        rest = b""
        while True:
            if left:
                end = pos + left
                if end > n:
                    pieces.append(data[pos:] if pos else data)
                    left = end - n
                    break
                pieces.append(data[pos:end])
                pos = end
                left = 0
                self._crlf = b"\r\n"
            crlf = self._crlf
            if crlf:
                got = data[pos:pos + len(crlf)]
                if got != crlf[:len(got)]:
                    status = BAD
                    break
                pos += len(got)
                crlf = self._crlf = crlf[len(got):]
                if crlf:
                    break
            if self._last:
                status, rest = self._after_last(data, self._last)
                break
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > self._max_line:
                    status = BAD
                else:
                    self._pending = data[pos:]
                break
            m = _SIZE_LINE.fullmatch(data, pos, eol + 2)
            if m is None:
                status = BAD
                break
            size = int(m.group(1), 16)
            if size == 0:
                # keep the last-chunk line: with trailers, h11 parses from there
                self._last = eol + 2 - pos
                status, rest = self._after_last(data[pos:], self._last)
                break
            left = size
            pos = eol + 2
        self._left = left
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return body, status, rest

    def _after_last(self, data: bytes, pos: int) -> tuple[str, bytes]:
        """``data`` starts with the last-chunk line, which ends at ``pos``."""
        after = data[pos:pos + 2]
        if after[:1] == b"\n":
            return DONE, data[pos + 1:]
        if after == b"\r\n":
            return DONE, data[pos + 2:]
        if after == b"" or after == b"\r":
            self._pending = data
            return MORE, b""
        return TRAILER, data
