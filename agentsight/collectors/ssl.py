"""The ssl collector: TLS plaintext from uprobes on the TLS libraries."""
from __future__ import annotations

import os
import platform
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable

from ..bpf.object import BpfObject
from ..bpf.ring import RingReader
from ..bpf.tracefs import with_tracefs
from ..errors import AgentsightError
from ..bpf.object import BPF_TRACE_UPROBE_MULTI
from .records import EVENT_TLS_NOTICE, FAST, NOTICE_EXEC, NOTICE_OPEN, SSL_FUNCTIONS
from .base import Collector, Filters
from .hold import HoldProcess, kernel_dev
from .tls.discovery import Discovery, TlsFile
from .tls.libraries import AEAD_KINDS, GO_CRYPTO_TLS, NeedsAnalysis

# The cookie the entry program is given for each function (enum ssl_fn).
FUNCTION_COOKIES = {name: i for i, name in enumerate(SSL_FUNCTIONS)}
# Functions whose return is not needed: they end a session, or all they
# say is in their arguments.
NO_RETURN_PROBE = {"SSL_free", "gnutls_deinit", "EVP_AEAD_CTX_seal", "EVP_AEAD_CTX_seal_scatter",
                   "EVP_AEAD_CTX_init", "EVP_AEAD_CTX_init_with_direction", "aes_gcm_seal",
                   "chacha20_poly1305_seal", "aes_gcm_init_128", "aes_gcm_init_256", "chacha20_poly1305_init"}
ENTRY_PROGRAM, RETURN_PROGRAM = "tls_enter", "tls_return"
NOTICE_PROGRAMS = ("notice_exec",)
NOTICE_OPEN_PROGRAMS = ("notice_openat_enter", "notice_openat_exit")

DEFAULT_MAX_CAPTURE = 1 << 20
KNOWN_EXES_MAX = 16384  # as many as csrc/ssl.bpf.c's known_exes holds
# Kinds hooked by an object of their own rather than ssl.bpf.o: kind ->
# (object, entry program, program on each return instruction).
STACK_OBJECTS = {GO_CRYPTO_TLS: ("go_tls.bpf.o", "go_tls_enter", "go_tls_return"),
                 **{kind: ("aead_tls.bpf.o", "aead_enter", "aead_open_return") for kind in AEAD_KINDS}}
# aead_tls.bpf.o's syscall tracepoints: which socket each key belongs to,
# and when it closes. Attached with the first file of an AEAD kind.
AEAD_TRACEPOINTS = ("aead_read", "aead_readv", "aead_recvfrom", "aead_recvmsg", "aead_close")


def uprobe_attach_mode() -> str:
    """"multi": one uprobe_multi link per file (Linux 6.6+); "perf": one
    perf-event link per function. AGENTSIGHT_UPROBE_ATTACH overrides."""
    forced = os.environ.get("AGENTSIGHT_UPROBE_ATTACH")
    if forced in ("multi", "perf"):
        return forced
    try:
        major, minor = (int(x) for x in platform.release().split("-")[0].split(".")[:2])
    except ValueError:
        return "perf"
    return "multi" if (major, minor) >= (6, 6) else "perf"


def attach_tls_file(obj: BpfObject, f: TlsFile, mode: str, pid: int | None = None,
                    entry: str = ENTRY_PROGRAM, ret: str = RETURN_PROGRAM) -> None:
    """The entry program on every TLS function of `f`, the return program on
    those whose result is reported; `mode` is uprobe_attach_mode()'s. Where
    the library lists a function's return instructions, the return program
    is a plain uprobe on each of them instead of a uretprobe."""
    functions = sorted(f.library.functions.items())
    if f.library.returns:
        at_returns = sorted((fn, offset) for fn, offsets in f.library.returns.items() for offset in offsets)
        if mode == "multi":
            obj.attach_uprobe_multi(entry, f.path, [o for _, o in functions],
                                    [FUNCTION_COOKIES[fn] for fn, _ in functions], pid=pid or 0)
            obj.attach_uprobe_multi(ret, f.path, [o for _, o in at_returns],
                                    [FUNCTION_COOKIES[fn] for fn, _ in at_returns], pid=pid or 0)
        else:
            for fn, offset in functions + at_returns:
                program = entry if (fn, offset) in functions else ret
                obj.attach_uprobe(program, f.path, offset, pid=pid or -1, cookie=FUNCTION_COOKIES[fn])
        return
    returning = [(fn, offset) for fn, offset in functions if fn not in NO_RETURN_PROBE]
    # A pid given to the uprobe itself keeps the breakpoint out of every
    # other process; the in-kernel filter stays as well. A uretprobe
    # hijacks the return address where it is placed, so it sits on the
    # function's first byte, like the entry probe.
    if mode == "multi":
        obj.attach_uprobe_multi(entry, f.path, [o for _, o in functions],
                                [FUNCTION_COOKIES[fn] for fn, _ in functions], pid=pid or 0)
        obj.attach_uprobe_multi(ret, f.path, [o for _, o in returning],
                                [FUNCTION_COOKIES[fn] for fn, _ in returning], retprobe=True, pid=pid or 0)
    else:
        for fn, offset in functions:
            obj.attach_uprobe(entry, f.path, offset, pid=pid or -1, cookie=FUNCTION_COOKIES[fn])
        for _, offset in returning:
            obj.attach_uprobe(ret, f.path, offset, retprobe=True, pid=pid or -1)


def _stderr_note(text: str) -> None:
    print(f"agentsight: note: {text}", file=sys.stderr, flush=True)


class SslCollector(Collector):
    name = "ssl"

    def __init__(self, filters: Filters, ring_size: int, wakeup_bytes: int,
                 max_capture: int = DEFAULT_MAX_CAPTURE, binary: str | None = None,
                 discovery: Discovery | None = None, report: Callable[[str], None] = _stderr_note,
                 shared_maps: Callable[[], dict[str, int]] | None = None, hold: bool = False):
        super().__init__()
        if not 0 < max_capture <= 1 << 28:
            raise AgentsightError(f"must be between 1 and {1 << 28} bytes, not {max_capture}", exit_code=2,
                                  parameter="max_capture")
        self.filters = filters
        self.ring_size = ring_size
        self.wakeup_bytes = wakeup_bytes
        self.max_capture = max_capture
        self.binary = binary
        self.discovery = discovery or Discovery()
        self.report = report
        # Maps of another object to use instead of this one's (the traced
        # process tree), asked for at start when that object exists.
        self.shared_maps = shared_maps
        self.hooked: list[TlsFile] = []
        self.hooked_later = 0
        self.hook_delays_ms: list[float] = []
        self._notices: queue.Queue = queue.Queue()  # what the analysis worker has to do
        self._worker: threading.Thread | None = None
        self._preloader: threading.Thread | None = None
        self._notice_reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self.bad_notices = 0
        self._attach_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._reported_notes = 0
        # Programs started while running whose TLS code is not hooked yet are
        # held (see hold.py) until it is: nothing of theirs runs unhooked.
        self.hold = hold
        self._holder: HoldProcess | None = None
        self._known_exes: set[tuple[int, int]] = set()  # what the kernel leaves out of the holds ring
        # Per held program: ms from exec to seized, ms from exec to let go, its path.
        self.held: list[tuple[float, float, str]] = []
        self._seized: dict[int, tuple[int, int, str]] = {}  # held pid -> exec and seized (monotonic ns), path

    @property
    def notes(self) -> list[str]:
        return self.discovery.notes[self._reported_notes:]

    def start(self) -> None:
        if self.binary:
            files = [self.discovery.binary(self.binary)]
        else:
            files = self.discovery.initial(self.filters.pid)
        disabled = frozenset(NOTICE_PROGRAMS + NOTICE_OPEN_PROGRAMS) if self.binary else frozenset()
        self.attach_mode = uprobe_attach_mode()
        obj = BpfObject("ssl.bpf.o", self.filters.config(self.max_capture, self.wakeup_bytes),
                        self.ring_size, disabled, self._attach_types(ENTRY_PROGRAM, RETURN_PROGRAM),
                        shared_maps=self.shared_maps() if self.shared_maps else None)
        self.objects.append(obj)
        self._stack_objects: dict[str, BpfObject] = {}
        self._following: set[BpfObject] = set()
        for f in files:
            self._hook(f)
        self._flush_notes()
        if self.binary:
            return
        # Programs started later, and libraries opened later, are hooked as
        # the kernel reports them.
        obj.attach("notice_exec")

        def attach_open_notices() -> None:
            for program in NOTICE_OPEN_PROGRAMS:
                obj.attach(program)
        try:
            with_tracefs(attach_open_notices)
        except OSError as exc:
            self.report(f"{exc.strerror}: libraries loaded after start from new paths are not hooked")
        self._notice_ring = RingReader()
        self._notice_ring.add(obj, "notices")
        if self.hold:
            self._start_holding(obj)
        self._worker = threading.Thread(target=self._work, name="agentsight-tls-analysis", daemon=True)
        self._worker.start()
        self._preloader = threading.Thread(target=self._preload, name="agentsight-tls-objects", daemon=True)
        self._preloader.start()
        self._notice_reader = threading.Thread(target=self._read_notices, name="agentsight-tls-notices",
                                               daemon=True)
        self._notice_reader.start()

    def prepare(self, path: str) -> None:
        """Analyses and hooks the program at `path` now, before it is started."""
        try:
            found = self.discovery.add(os.path.realpath(path), path)
            if self._holder is not None:
                self._know(os.stat(path))  # hooked, or known to need no hooks: not held
        except OSError:
            found = None
        if found is not None:
            self._hook(found)
        self._flush_notes()

    def _attach_types(self, *programs: str) -> dict[str, int]:
        return dict.fromkeys(programs, BPF_TRACE_UPROBE_MULTI) if self.attach_mode == "multi" else {}

    def _object_for(self, kind: str) -> tuple[BpfObject, str, str]:
        """The object that hooks files of `kind`; it writes into ssl.bpf.o's
        ring and follows its filters."""
        if kind not in STACK_OBJECTS:
            return self.objects[0], ENTRY_PROGRAM, RETURN_PROGRAM
        name, entry, ret = STACK_OBJECTS[kind]
        # Loading takes tens of milliseconds: never under the attach lock,
        # which the hooking of every other file waits for.
        with self._load_lock:
            obj = self._stack_objects.get(name)
            if obj is None:
                ssl = self.objects[0]
                obj = BpfObject(name, self.filters.config(self.max_capture, self.wakeup_bytes), 4096,
                                attach_types=self._attach_types(entry, ret),
                                shared_maps={"events": ssl.map_fd("events"), "traced": ssl.map_fd("traced")})
                self._stack_objects[name] = obj
                self.objects.append(obj)
        return obj, entry, ret

    def _preload(self) -> None:
        """Loads the other TLS objects in the background, so that a program
        seen for the first time is hooked without waiting for its object."""
        for kind in {spec[0]: kind for kind, spec in STACK_OBJECTS.items()}.values():  # a kind of each object
            try:
                self._object_for(kind)
            except AgentsightError as exc:
                self.report(exc.message.splitlines()[0])

    def _hook(self, f: TlsFile) -> None:
        obj, entry, ret = self._object_for(f.kind)
        with self._attach_lock:
            attach_tls_file(obj, f, self.attach_mode, self.filters.pid, entry, ret)
            if f.kind in AEAD_KINDS:
                self._follow_sockets(obj, f)
            self.hooked.append(f)

    def _start_holding(self, obj: BpfObject) -> None:
        """Starts the process that holds new programs (before any thread of
        ours exists: it is forked), after telling the kernel which are known."""
        for f in self.hooked:
            self._know(os.stat(f.path))
        for st_dev, st_ino in self.discovery.analyzer.files_without_tls():
            self._know_key((kernel_dev(st_dev), st_ino))
        self._holder = HoldProcess(obj)
        obj.update("hold_on", b"\0\0\0\0", b"\1\0\0\0")

    def _know(self, st: os.stat_result) -> None:
        self._know_key((kernel_dev(st.st_dev), st.st_ino))

    def _know_key(self, key: tuple[int, int]) -> None:
        with self._attach_lock:
            if key in self._known_exes or len(self._known_exes) >= KNOWN_EXES_MAX:
                return
            self._known_exes.add(key)
            self.objects[0].update("known_exes", struct.pack("<QQ", *key), b"\1")

    def _follow_sockets(self, obj: BpfObject, f: TlsFile) -> None:
        """The threads of this executable have their socket reads noted, to
        tie each AEAD key to its connection."""
        obj.update("aead_exes", struct.pack("<Q", os.stat(f.path).st_ino), b"\1")
        if obj in self._following:
            return
        self._following.add(obj)

        def attach_socket_tracepoints() -> None:
            for program in AEAD_TRACEPOINTS:
                obj.attach(program)
        try:
            with_tracefs(attach_socket_tracepoints)
        except OSError as exc:
            self.report(f"{exc.strerror}: TLS records seen at the AEAD layer cannot be tied to their connections "
                        "and are dropped (counted)")

    def _read_notices(self) -> None:
        """Its own thread: what is known already is hooked right away, the race
        with the program's first TLS call being short; files that need
        analysing go to the worker, so notices never wait for an analysis."""
        decode = FAST[EVENT_TLS_NOTICE].decode
        while not self._stopping.is_set():
            for record in self._notice_ring.poll(100):
                try:
                    ts_ns, pid, _, _, _, _, what, _, path = decode(record)
                    item = (ts_ns, pid, what, path.decode("utf-8", "replace"))
                except Exception:  # noqa: BLE001 - a bad record is only a missed notice
                    self.bad_notices += 1
                    continue
                try:
                    self._discover(*item, quick=True)
                except NeedsAnalysis:
                    if self._holder is not None and what == NOTICE_EXEC:
                        # Held already if the kernel asked; if its program is known
                        # but not the libraries of its container, held from now.
                        self._holder.hold(pid, ts_ns)
                    self._notices.put(item)
                    continue
                self._settled(pid, what, ts_ns)
            if self._holder is not None:
                self._take_reports(self._holder.reports())

    def _settled(self, pid: int, what: int, exec_ns: int) -> None:
        """What `pid` runs is hooked or known to need no hooks: it may run."""
        if self._holder is None or what != NOTICE_EXEC:
            return
        try:
            self._know(os.stat(f"/proc/{pid}/exe"))
        except OSError:
            pass  # gone
        self._holder.release(pid, exec_ns)

    def _take_reports(self, reports: list[tuple]) -> None:
        for report in reports:
            if report[0] == "held":
                _, pid, exec_ns, seized_ns, path = report
                self._seized[pid] = (exec_ns, seized_ns, path)
            elif report[0] == "let go":
                _, pid, when = report
                seized = self._seized.pop(pid, None)
                if seized is not None:
                    exec_ns, seized_ns, path = seized
                    self.held.append(((seized_ns - exec_ns) / 1e6, (when - exec_ns) / 1e6, path))
            else:
                self.report(report[1])

    def _work(self) -> None:
        while True:
            item = self._notices.get()
            if item is None:
                return
            ts_ns, pid, what, path = item
            self._discover(ts_ns, pid, what, path, quick=False)
            self._flush_notes()
            self._settled(pid, what, ts_ns)

    def _discover(self, ts_ns: int, pid: int, what: int, path: str, quick: bool) -> None:
        try:
            if what == NOTICE_EXEC:
                found = self.discovery.on_exec(pid, quick)
            elif what == NOTICE_OPEN:
                found = [f for f in (self.discovery.on_open(pid, path, quick),) if f is not None]
            else:
                found = []
            for f in found:
                self._hook(f)
                self.hooked_later += 1
                # Both on CLOCK_MONOTONIC: how long the program ran unhooked.
                self.hook_delays_ms.append((time.monotonic_ns() - ts_ns) / 1e6)
        except NeedsAnalysis:
            raise
        except AgentsightError as exc:
            self.report(exc.message.splitlines()[0])
        except Exception as exc:  # discovery must never take the capture down
            self.report(f"while hooking {path} for pid {pid}: {type(exc).__name__}: {exc}")

    def _flush_notes(self) -> None:
        notes = self.discovery.notes
        while self._reported_notes < len(notes):
            self.report(notes[self._reported_notes])
            self._reported_notes += 1

    def hold_summary(self) -> str | None:
        """One line on the programs held until hooked, for the final summary."""
        if not self.held:
            return None
        seized = sorted(h[0] for h in self.held)
        let_go = sorted(h[1] for h in self.held)
        longest = ", ".join(f"{path} {ms:.0f} ms" for _, ms, path in sorted(self.held, key=lambda h: -h[1])[:5])
        n = len(self.held)
        return (f"held {n} new program{'s' if n != 1 else ''} until {'their' if n != 1 else 'its'} TLS code was "
                f"hooked: seized {seized[n // 2]:.1f} ms after exec (median; at most {seized[-1]:.1f}), running "
                f"again {let_go[n // 2]:.0f} ms after exec (median; at most {let_go[-1]:.0f}); longest: {longest}")

    def describe(self) -> str:
        files = ", ".join(f"{f.shown_path} ({f.kind})" for f in self.hooked)
        failed = "; ".join(f"{f['path']}: {f['reason']}" for f in self.discovery.failures)
        return f"ssl: {files}" + (f"; not hooked: {failed}" if failed else "")

    def close(self) -> None:
        self._stopping.set()
        if self._notice_reader is not None:
            self._notice_reader.join()
            self._notice_reader = None
            self._notice_ring.close()
        if self._holder is not None:
            self.objects[0].update("hold_on", b"\0\0\0\0", b"\0\0\0\0")
            self._take_reports(self._holder.close())  # lets every held program go
            self._holder = None
        if self._worker is not None:
            self._notices.put(None)
            self._worker.join()
            self._worker = None
        if self._preloader is not None:
            self._preloader.join()  # an object it loads must be closed too
            self._preloader = None
        super().close()
        self.discovery.close()
