"""Incremental server-sent events (text/event-stream) parser."""
from __future__ import annotations

from collections.abc import MutableMapping

# The most one event may hold (its data lines, and a line still arriving).
# Real events are deltas of a few hundred bytes; the largest are final
# summaries (a whole Responses API response), far below this.
MAX_EVENT = 16 << 20


class _Dropped(list):  # type: ignore[type-arg]
    """The data lines of an event that was cut: they are not kept."""

    def append(self, v: object) -> None:
        pass


class SSEParser:
    """Feed body bytes, get complete events ``(event_name, data)`` back.

    Lines end with CRLF, LF or CR; an empty line dispatches the event; several
    ``data:`` lines are joined with ``\\n``; comments and other fields are
    ignored.  A NUL byte (a byte the capture lost) ends a line like LF, so a
    hole ends the damaged event.  Only complete events are decoded (UTF-8,
    errors replaced), so a multi-byte character or a line split across reads
    is fine.

    Linear in the input whatever the read size: a line that does not end in
    one read is kept in pieces and joined once, when it ends.  An event over
    :data:`MAX_EVENT` bytes is cut: it is not returned, the parser skips to
    the next one, and ``stats`` (a Counter, if given) counts it in
    ``skipped.sse_event_too_large`` and its bytes (at least those seen
    before its last read) in ``skipped.sse_event_bytes``.
    """

    __slots__ = ("_tail", "_tail_len", "_cr", "_event", "_data", "_size", "_counted", "_stats")

    def __init__(self, stats: MutableMapping[str, int] | None = None) -> None:
        self._tail: list[bytes] = []  # pieces of the line still arriving
        self._tail_len = 0
        self._cr = False  # the last read ended in CR, maybe the first half of a CRLF
        self._event: str | None = None
        self._data: list[bytes] | None = None  # the event in progress (its data lines)
        self._size = 0  # its bytes counted so far: in _data[:_counted], or dropped
        self._counted = 0
        self._stats = stats

    def feed(self, data: bytes) -> list[tuple[str | None, str]]:
        # Most reads of a stream are one whole "data: ..." event, as servers
        # write them: taken without splitting lines.
        if (data[:6] == b"data: " and data[-2:] == b"\n\n" and data.find(b"\n") == len(data) - 2
                and not self._tail and self._data is None and not self._cr and b"\r" not in data
                and b"\0" not in data and len(data) <= MAX_EVENT):
            event, self._event, self._size = self._event, None, 0
            return [(event, data[6:-2].decode("utf-8", "replace"))]
        if self._cr and data:  # the last read ended in CR, which ended its line
            self._cr = False
            if data[:1] == b"\n" or data[:1] == b"\0":  # the second half of that CRLF
                data = data[1:]
        tail = self._tail
        if tail:  # a line goes on from the last read
            if b"\n" not in data and b"\r" not in data and b"\0" not in data:
                # and on: keep the piece, join them all once the line ends
                tail.append(data)
                self._tail_len += len(data)
                if self._tail_len + self._size > MAX_EVENT:
                    self._cut_tail()
                return []
            tail.append(data)
            buf = b"".join(tail)
            self._tail = []
            self._tail_len = 0
        else:
            buf = data
        if b"\0" in buf:
            # NUL never occurs in an event stream: it is the HTTP stage's filler
            # for bytes the capture lost.  End the damaged event there, so the
            # events after the hole parse again.
            buf = buf.replace(b"\0", b"\n")
        if b"\r" in buf:
            if buf[-1:] == b"\r":  # ends its line, and may be the first half of a CRLF
                self._cr = True
                buf = buf[:-1].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\n"
            else:
                buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        # the last piece is an incomplete line (empty when buf ends with "\n")
        last = lines.pop()
        if last:
            self._tail = [last]
            self._tail_len = len(last)
        out: list[tuple[str | None, str]] = []
        # A hot loop (one call per read of a streamed response): the state
        # lives in locals and events are dispatched inline.
        cap = MAX_EVENT
        event = self._event
        datas = carried = self._data
        for line in lines:
            if not line:
                if datas:
                    v = datas[0] if len(datas) == 1 else b"\n".join(datas)
                    if len(v) <= cap:
                        out.append((event, v.decode("utf-8", "replace")))
                    else:
                        self._cut()
                        self._count_dropped(len(v))
                elif datas is not None:  # a cut event's _Dropped, always empty
                    self._count_dropped(self._size)
                event = None
                datas = None
            elif line[:5] == b"data:":
                v = line[6:] if line[5:6] == b" " else line[5:]
                if datas is None:
                    datas = [v]
                else:
                    datas.append(v)
            elif line[:6] == b"event:":
                v = line[7:] if line[6:7] == b" " else line[6:]
                event = v.decode("utf-8", "replace")
            elif line == b"data":
                if datas is None:
                    datas = [b""]
                else:
                    datas.append(b"")
        self._event = event
        self._data = datas
        if datas is not None:  # an event goes on into the next read
            self._grow(datas, carried, len(buf))
        elif self._size:
            self._size = 0
        return out

    def _grow(self, datas: list[bytes], carried: list[bytes] | None, read: int) -> None:
        """Counts what the event in progress holds now, and cuts it when too large."""
        if datas is not carried:  # it began in this read
            self._size = 0
            self._counted = 0
        if type(datas) is _Dropped:
            if datas is carried:
                self._size += read
            return
        size = self._size
        for i in range(self._counted, len(datas)):
            size += len(datas[i]) + 1
        self._size = size
        self._counted = len(datas)
        if size + self._tail_len > MAX_EVENT:
            self._data = self._cut()

    def _cut(self) -> _Dropped:
        """The event in progress is too large: count it, drop it, skip to its end."""
        st = self._stats
        if st is not None:
            st["skipped.sse_event_too_large"] = st.get("skipped.sse_event_too_large", 0) + 1
        return _Dropped()

    def _count_dropped(self, size: int) -> None:
        st = self._stats
        if st is not None:
            st["skipped.sse_event_bytes"] = st.get("skipped.sse_event_bytes", 0) + size
        self._size = 0

    def _cut_tail(self) -> None:
        """A line still arriving makes its event too large: its bytes go."""
        if type(self._data) is not _Dropped:
            self._data = self._cut()
        self._size += self._tail_len
        # The rest of the line goes too.  One byte that starts no field
        # stands in for what was dropped, so that the rest, once it ends,
        # parses as a line that is ignored.
        self._tail = [b"x"]
        self._tail_len = 1

    def close(self) -> list[tuple[str | None, str]]:
        """End of body: a last event without its blank line is still returned."""
        out = self.feed(b"\n") if self._tail else []
        self._cr = False
        if self._data:
            out.append((self._event, b"\n".join(self._data).decode("utf-8", "replace")))
        elif self._data is not None:
            self._count_dropped(self._size)
        self._event = None
        self._data = None
        self._size = 0
        return out
