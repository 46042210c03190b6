"""What a collector is: BPF objects attached with some filters."""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass

from ..bpf.object import BpfObject
from .records import CONFIG, STAT_NAMES


@dataclass
class Filters:
    """Applied in the kernel: unrelated tasks cost nothing in user space."""

    pid: int | None = None
    uid: int | None = None
    comm: str | None = None
    # Only the processes in the shared `traced` map (a process tree being
    # recorded); comm then names programs whose exec adds them.
    follow: bool = False

    def config(self, max_capture: int = 0, wakeup_bytes: int = 0) -> bytes:
        comm = (self.comm or "").encode()[:15]
        return CONFIG.build(
            dict(
                tgid=0 if self.follow else self.pid or 0,
                follow=int(self.follow),
                uid=self.uid if self.uid is not None else 0,
                filter_uid=int(self.uid is not None),
                max_capture=max_capture,
                self_tgid=os.getpid(),
                wakeup_bytes=wakeup_bytes,
                comm=comm.ljust(16, b"\0"),
            )
        )


class Collector(abc.ABC):
    """Owns its BPF objects from start() to close()."""

    name = "collector"

    def __init__(self) -> None:
        self.objects: list[BpfObject] = []

    @abc.abstractmethod
    def start(self) -> None:
        """Loads and attaches its BPF objects."""

    def describe(self) -> str:
        """One line for the `ready` message."""
        return f"{self.name}: {sum(o.link_count for o in self.objects)} probes"

    def kernel_stats(self) -> dict[str, int]:
        totals = dict.fromkeys(STAT_NAMES, 0)
        for obj in self.objects:
            for name, value in zip(STAT_NAMES, obj.stats(len(STAT_NAMES))):
                totals[name] += value
        return totals

    def close(self) -> None:
        while self.objects:
            self.objects.pop().close()
