"""Events recorded earlier, as a source: JSON lines written by `ssl`,
`process` or `trace --raw`, decoded into raw events at this boundary."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from ..errors import AgentsightError
from ..events import EventDecodeError, RawEvent, from_json

BATCH = 2048


class RecordedEvents:
    """The `Source` of `replay`. Lines that are not JSON, and JSON that is
    not a raw event, are counted (`losses`), never fatal."""

    def __init__(self, path: str, progress: bool | None = None):
        self.path = path
        try:
            self._file: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")
        except OSError as exc:
            raise AgentsightError(f"cannot read {path}: {exc.strerror}", exit_code=2) from None
        self.lines = 0
        self.bytes = 0
        self.not_json = 0
        self.not_events: dict[str, int] = {}
        self._progress = sys.stderr.isatty() if progress is None else progress
        self._started = 0.0
        self._last_progress = 0.0
        self._counts: dict[str, int] = {}

    def start(self) -> str:
        self._started = self._last_progress = time.monotonic()
        return f"replay: {self.path}"

    def read(self, timeout: float) -> list[RawEvent] | None:
        out: list[RawEvent] = []
        counts = self._counts
        for line in self._file:
            self.lines += 1
            self.bytes += len(line)
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    self.not_json += 1
                continue
            try:
                ev = from_json(d)
            except EventDecodeError as exc:
                reason = str(exc).split(":", 1)[0] if "unknown event type" not in str(exc) else "unknown event type"
                self.not_events[reason] = self.not_events.get(reason, 0) + 1
                continue
            counts[ev.kind] = counts.get(ev.kind, 0) + 1
            out.append(ev)
            if len(out) >= BATCH:
                break
        else:
            if not out:
                return None
        if self._progress and time.monotonic() - self._last_progress > 1:
            self._last_progress = time.monotonic()
            print(f"\ragentsight: replay: {self.lines} lines, {self.bytes / 1e6:.1f} MB", end="", file=sys.stderr)
        return out

    def stop(self) -> None:
        pass

    def finish(self) -> list[RawEvent]:
        if self._progress:
            print(file=sys.stderr)
        return []

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def losses(self) -> dict[str, int]:
        out = {"lines_not_json": self.not_json}
        for reason, n in self.not_events.items():
            out[f"not_an_event: {reason}"] = n
        return out

    def seconds(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def notes(self) -> list[str]:
        seconds = self.seconds()
        rate = self.bytes / 1e6 / seconds if seconds > 0 else 0.0
        return [f"replay: {self.lines} lines, {self.bytes / 1e6:.1f} MB in {seconds:.1f} s ({rate:.0f} MB/s); "
                f"{self.not_json} lines were not JSON"
                + (f", {sum(self.not_events.values())} were not events" if self.not_events else "")]

    def close(self) -> None:
        if self._file is not sys.stdin.buffer:
            self._file.close()


class GivenEvents:
    """The `Source` of events a caller hands over (agentsight.analyze):
    typed raw events, or their JSON form."""

    def __init__(self, events: Iterable[RawEvent | dict[str, Any]]):
        self._events = iter(events)
        self._counts: dict[str, int] = {}
        self.not_events = 0
        self._started = 0.0

    def start(self) -> str:
        self._started = time.monotonic()
        return "events given"

    def read(self, timeout: float) -> list[RawEvent] | None:
        out: list[RawEvent] = []
        counts = self._counts
        for ev in self._events:
            if isinstance(ev, dict):
                try:
                    ev = from_json(ev)
                except EventDecodeError:
                    self.not_events += 1
                    continue
            elif not isinstance(ev, RawEvent):
                self.not_events += 1
                continue
            counts[ev.kind] = counts.get(ev.kind, 0) + 1
            out.append(ev)
            if len(out) >= BATCH:
                return out
        return out or None

    def stop(self) -> None:
        pass

    def finish(self) -> list[RawEvent]:
        return []

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def losses(self) -> dict[str, int]:
        return {"not_an_event": self.not_events}

    def seconds(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def notes(self) -> list[str]:
        return []

    def close(self) -> None:
        pass
