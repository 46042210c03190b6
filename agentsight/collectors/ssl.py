"""The ssl collector: TLS plaintext from uprobes on the TLS libraries."""
from __future__ import annotations

from ..bpf.object import BpfObject
from ..errors import AgentsightError
from .base import Collector, Filters
from .tls_targets import TlsTarget, discover, display_path

ENTRY_PROGRAMS = {
    "SSL_write": "ssl_write_enter",
    "SSL_read": "ssl_read_enter",
    "SSL_write_ex": "ssl_write_ex_enter",
    "SSL_read_ex": "ssl_read_ex_enter",
    "SSL_do_handshake": "ssl_do_handshake_enter",
    "SSL_free": "ssl_free_enter",
}
RETURN_PROGRAM = "ssl_return"

DEFAULT_MAX_CAPTURE = 1 << 20


class SslCollector(Collector):
    name = "ssl"

    def __init__(self, filters: Filters, ring_size: int, wakeup_bytes: int,
                 max_capture: int = DEFAULT_MAX_CAPTURE, binary: str | None = None):
        super().__init__()
        if not 0 < max_capture <= 1 << 28:
            raise AgentsightError(f"--max-capture must be between 1 and {1 << 28} bytes", exit_code=2)
        self.filters = filters
        self.ring_size = ring_size
        self.wakeup_bytes = wakeup_bytes
        self.max_capture = max_capture
        self.binary = binary
        self.targets: list[TlsTarget] = []
        self.notes: list[str] = []

    def start(self) -> None:
        self.targets, self.notes = discover(self.binary, self.filters.pid)
        if not self.targets:
            raise AgentsightError(
                "found no TLS library to hook (no libssl mapped or installed, no node); "
                "name one with --binary PATH"
            )
        obj = BpfObject("ssl.bpf.o", self.filters.config(self.max_capture, self.wakeup_bytes), self.ring_size)
        self.objects.append(obj)
        # A pid given to the uprobe itself keeps the breakpoint out of
        # every other process; the in-kernel filter stays as well.
        pid = self.filters.pid or -1
        for target in self.targets:
            for fn, offset in sorted(target.functions.items()):
                obj.attach_uprobe(ENTRY_PROGRAMS[fn], target.path, offset, pid=pid)
                if fn != "SSL_free":
                    # A uretprobe hijacks the return address where it is
                    # placed, so it must sit on the function's first byte.
                    obj.attach_uprobe(RETURN_PROGRAM, target.path, offset, retprobe=True, pid=pid)

    def describe(self) -> str:
        files = ", ".join(f"{display_path(t.path)} ({t.kind}, {len(t.functions)} functions)" for t in self.targets)
        return f"ssl: {files}"
