"""The ssl collector: TLS plaintext from uprobes on the TLS libraries."""
from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable

from ..bpf.object import BpfObject
from ..bpf.tracefs import tracefs_available
from ..errors import AgentsightError
from ..events import NOTICE_EXEC, NOTICE_OPEN
from .base import Collector, Filters
from .tls.discovery import Discovery, TlsFile

ENTRY_PROGRAMS = {
    "SSL_write": "ssl_write_enter",
    "SSL_read": "ssl_read_enter",
    "SSL_write_ex": "ssl_write_ex_enter",
    "SSL_read_ex": "ssl_read_ex_enter",
    "SSL_do_handshake": "ssl_do_handshake_enter",
    "SSL_free": "session_free_enter",
    "gnutls_record_send": "gnutls_record_send_enter",
    "gnutls_record_recv": "gnutls_record_recv_enter",
    "gnutls_handshake": "gnutls_handshake_enter",
    "gnutls_deinit": "session_free_enter",
}
# Functions whose return is not needed: they only end a session.
NO_RETURN_PROBE = {"SSL_free", "gnutls_deinit"}
RETURN_PROGRAM = "ssl_return"
NOTICE_PROGRAMS = ("notice_exec",)
NOTICE_OPEN_PROGRAMS = ("notice_openat_enter", "notice_openat_exit")

DEFAULT_MAX_CAPTURE = 1 << 20


def _stderr_note(text: str) -> None:
    print(f"agentsight: note: {text}", file=sys.stderr, flush=True)


class SslCollector(Collector):
    name = "ssl"

    def __init__(self, filters: Filters, ring_size: int, wakeup_bytes: int,
                 max_capture: int = DEFAULT_MAX_CAPTURE, binary: str | None = None,
                 discovery: Discovery | None = None, report: Callable[[str], None] = _stderr_note):
        super().__init__()
        if not 0 < max_capture <= 1 << 28:
            raise AgentsightError(f"--max-capture must be between 1 and {1 << 28} bytes", exit_code=2)
        self.filters = filters
        self.ring_size = ring_size
        self.wakeup_bytes = wakeup_bytes
        self.max_capture = max_capture
        self.binary = binary
        self.discovery = discovery or Discovery()
        self.report = report
        self.hooked: list[TlsFile] = []
        self.hooked_later = 0
        self._notices: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._attach_lock = threading.Lock()
        self._reported_notes = 0

    @property
    def notes(self) -> list[str]:
        return self.discovery.notes[self._reported_notes:]

    def start(self) -> None:
        if self.binary:
            files = [self.discovery.binary(self.binary)]
        else:
            files = self.discovery.initial(self.filters.pid)
        disabled = frozenset(NOTICE_PROGRAMS + NOTICE_OPEN_PROGRAMS) if self.binary else frozenset()
        obj = BpfObject("ssl.bpf.o", self.filters.config(self.max_capture, self.wakeup_bytes),
                        self.ring_size, disabled)
        self.objects.append(obj)
        for f in files:
            self._hook(f)
        self._flush_notes()
        if self.binary:
            return
        # Programs started later, and libraries opened later, are hooked as
        # the kernel reports them.
        obj.attach("notice_exec")
        try:
            with tracefs_available():
                for program in NOTICE_OPEN_PROGRAMS:
                    obj.attach(program)
        except OSError as exc:
            self.report(f"{exc.strerror}: libraries loaded after start from new paths are not hooked")
        self._worker = threading.Thread(target=self._work, name="agentsight-tls-discovery", daemon=True)
        self._worker.start()

    def _hook(self, f: TlsFile) -> None:
        obj = self.objects[0]
        # A pid given to the uprobe itself keeps the breakpoint out of
        # every other process; the in-kernel filter stays as well.
        pid = self.filters.pid or -1
        with self._attach_lock:
            for fn, offset in sorted(f.library.functions.items()):
                obj.attach_uprobe(ENTRY_PROGRAMS[fn], f.path, offset, pid=pid)
                if fn not in NO_RETURN_PROBE:
                    # A uretprobe hijacks the return address where it is
                    # placed, so it must sit on the function's first byte.
                    obj.attach_uprobe(RETURN_PROGRAM, f.path, offset, retprobe=True, pid=pid)
            self.hooked.append(f)

    def on_notice(self, pid: int, what: int, path: str) -> None:
        """Called on the consumer thread: hand over, never block it."""
        self._notices.put((pid, what, path))

    def _work(self) -> None:
        while True:
            item = self._notices.get()
            if item is None:
                return
            pid, what, path = item
            try:
                if what == NOTICE_EXEC:
                    found = self.discovery.on_exec(pid)
                elif what == NOTICE_OPEN:
                    found = self.discovery.on_open(pid, path)
                else:
                    found = None
                if found is not None:
                    self._hook(found)
                    self.hooked_later += 1
            except AgentsightError as exc:
                self.report(exc.message.splitlines()[0])
            except Exception as exc:  # discovery must never take the capture down
                self.report(f"while hooking {path} for pid {pid}: {type(exc).__name__}: {exc}")
            self._flush_notes()

    def _flush_notes(self) -> None:
        notes = self.discovery.notes
        while self._reported_notes < len(notes):
            self.report(notes[self._reported_notes])
            self._reported_notes += 1

    def describe(self) -> str:
        files = ", ".join(f"{f.shown_path} ({f.kind})" for f in self.hooked)
        return f"ssl: {files}"

    def close(self) -> None:
        if self._worker is not None:
            self._notices.put(None)
            self._worker.join()
            self._worker = None
        super().close()
        self.discovery.close()
