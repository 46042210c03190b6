"""The process collector: exec, exit, fork, file activity and connections."""
from __future__ import annotations

import struct

from ..bpf.object import BpfObject
from ..bpf.tracefs import with_tracefs
from ..errors import AgentsightError
from .base import Collector, Filters

LIFECYCLE_PROGRAMS = ("handle_exec", "handle_exit", "handle_fork")
# Per kind of activity: the syscall programs it needs, and those attached
# where the kernel has the syscall (open and rename exist on x86-64 only).
SYSCALL_PROGRAMS = {
    "open": (("enter_openat", "exit_openat"),
             ("enter_open", "exit_open", "enter_openat2", "exit_openat2")),
    "file": (("enter_unlinkat", "exit_unlinkat", "enter_renameat2", "exit_renameat2"),
             ("enter_unlink", "exit_unlink", "enter_rmdir", "exit_rmdir", "enter_rename", "exit_rename",
              "enter_renameat", "exit_renameat")),
    "connect": (("enter_connect", "exit_connect"), ()),
}


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, filters: Filters, ring_size: int, wakeup_bytes: int, opens: bool = True,
                 files: bool = True, connects: bool = True):
        super().__init__()
        self.filters = filters
        self.ring_size = ring_size
        self.wakeup_bytes = wakeup_bytes
        self.kinds = [k for k, on in (("open", opens), ("file", files), ("connect", connects)) if on]
        self.notes: list[str] = []

    def start(self) -> None:
        disabled = frozenset(p for kind, (required, optional) in SYSCALL_PROGRAMS.items()
                             if kind not in self.kinds for p in required + optional)
        obj = BpfObject("process.bpf.o", self.filters.config(0, self.wakeup_bytes), self.ring_size, disabled)
        self.objects.append(obj)
        for program in LIFECYCLE_PROGRAMS:
            obj.attach(program)
        if not self.kinds:
            return

        def attach_syscalls() -> None:
            for kind in self.kinds:
                required, optional = SYSCALL_PROGRAMS[kind]
                for program in required:
                    obj.attach(program)
                for program in optional:
                    try:
                        obj.attach(program)
                    except AgentsightError as exc:
                        self.notes.append(f"{program} not attached: {exc.message.splitlines()[0]}")
        try:
            with_tracefs(attach_syscalls)
        except OSError as exc:
            raise AgentsightError(f"{exc.strerror}; file and network activity need tracefs") from None

    def trace_pids(self, pids) -> None:
        """Adds processes to the recorded tree (follow mode); forks extend it in the kernel."""
        for pid in pids:
            self.objects[0].update("traced", struct.pack("<I", pid), b"\1")

    def traced_map_fd(self) -> int:
        return self.objects[0].map_fd("traced")

    def describe(self) -> str:
        return "process: " + ", ".join(["exec, exit, fork"] + self.kinds)
