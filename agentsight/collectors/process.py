"""The process collector: exec, exit, fork and file opens."""
from __future__ import annotations

from ..bpf.object import BpfObject
from ..bpf.tracefs import tracefs_available
from ..errors import AgentsightError
from .base import Collector, Filters

LIFECYCLE_PROGRAMS = ("handle_exec", "handle_exit", "handle_fork")
# openat is what libc uses; open and openat2 are attached where the kernel has them.
OPEN_PROGRAMS = ("enter_openat", "exit_openat")
OPTIONAL_OPEN_PROGRAMS = ("enter_open", "exit_open", "enter_openat2", "exit_openat2")


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, filters: Filters, ring_size: int, wakeup_bytes: int, opens: bool = True):
        super().__init__()
        self.filters = filters
        self.ring_size = ring_size
        self.wakeup_bytes = wakeup_bytes
        self.opens = opens
        self.notes: list[str] = []

    def start(self) -> None:
        disabled = frozenset() if self.opens else frozenset(OPEN_PROGRAMS + OPTIONAL_OPEN_PROGRAMS)
        obj = BpfObject("process.bpf.o", self.filters.config(0, self.wakeup_bytes), self.ring_size, disabled)
        self.objects.append(obj)
        for program in LIFECYCLE_PROGRAMS:
            obj.attach(program)
        if not self.opens:
            return
        try:
            with tracefs_available():
                for program in OPEN_PROGRAMS:
                    obj.attach(program)
                for program in OPTIONAL_OPEN_PROGRAMS:
                    try:
                        obj.attach(program)
                    except AgentsightError as exc:
                        self.notes.append(f"{program} not attached: {exc.message.splitlines()[0]}")
        except OSError as exc:
            raise AgentsightError(f"{exc.strerror}; file opens need tracefs (or run with --no-open)") from None

    def describe(self) -> str:
        what = "exec, exit, fork" + (", open" if self.opens else "")
        return f"process: {what}"
