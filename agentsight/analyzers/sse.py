"""Incremental server-sent events (text/event-stream) parser."""
from __future__ import annotations


class SSEParser:
    """Feed body bytes, get complete events ``(event_name, data)`` back.

    Lines end with CRLF, LF or CR; an empty line dispatches the event; several
    ``data:`` lines are joined with ``\\n``; comments and other fields are
    ignored.  NUL bytes (lost bytes) end the current event.  Only complete events are decoded (UTF-8, errors replaced), so a
    multi-byte character or a line split across reads is fine.
    """

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[bytes] | None = None

    def feed(self, data: bytes) -> list[tuple[str | None, str]]:
        buf = self._buf + data if self._buf else data
        if b"\0" in buf:
            # NUL never occurs in an event stream: it is the HTTP stage's filler
            # for bytes the capture lost.  End the damaged event there, so the
            # events after the hole parse again.
            buf = buf.replace(b"\0", b"\n")
        cr = b""
        if b"\r" in buf:
            if buf[-1:] == b"\r":  # may be the first half of a CRLF
                cr = b"\r"
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        # the last piece is an incomplete line (empty when buf ends with "\n")
        self._buf = lines.pop() + cr if cr else lines.pop()
        out: list[tuple[str | None, str]] = []
        if not lines:
            return out
        # A hot loop (one call per read of a streamed response): the state
        # lives in locals and events are dispatched inline.
        event = self._event
        datas = self._data
        for line in lines:
            if not line:
                if datas is not None:
                    v = datas[0] if len(datas) == 1 else b"\n".join(datas)
                    out.append((event, v.decode("utf-8", "replace")))
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
        return out

    def _dispatch(self, out: list[tuple[str | None, str]]) -> None:
        if self._data is not None:
            out.append((self._event, b"\n".join(self._data).decode("utf-8", "replace")))
        self._event = None
        self._data = None

    def close(self) -> list[tuple[str | None, str]]:
        """End of body: a last event without its blank line is still returned."""
        out = self.feed(b"\n") if self._buf.strip(b"\r") else []
        if self._data is not None:
            self._dispatch(out)
        return out
