"""What a sink is: where the events of a run go."""
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """How a run ended, given to every sink when it closes.

    `status`: "complete", or "stopped: <why>". `losses`: what was lost or cut
    and how much (the capture's, the analysis', the sinks'); `stats`: what
    the analysis counted."""

    status: str = "complete"
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    losses: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Sink(abc.ABC):
    """Receives every event of a run, in order, already redacted (unless
    the run keeps secrets). A sink never reads back what another wrote."""

    #: the event kinds this sink wants (`Event.kind`); None: all of them
    kinds: frozenset[str] | None = None

    @abc.abstractmethod
    def write(self, events: Sequence[Any]) -> None:
        """A batch of events of the wanted kinds, in capture order."""

    def tick(self, now: float) -> None:  # noqa: B027 - most sinks need no timer
        """Called between batches (at least every ~100 ms while capturing)."""

    def close(self, outcome: Outcome) -> None:  # noqa: B027
        """End of the run."""

    def losses(self) -> dict[str, int]:
        """What this sink could not write (events dropped, fields cut)."""
        return {}


RAW_KINDS = frozenset(("ssl", "exec", "exit", "fork", "open", "file", "connect"))
PROCESS_KINDS = frozenset(("exec", "exit", "fork", "open", "file", "connect"))
DERIVED_KINDS = frozenset(("http", "llm_call", "websocket", "link", "unexplained"))
