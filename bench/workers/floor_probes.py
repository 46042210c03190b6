"""Probes at agentsight's own attach points, without agentsight's consumer:

  empty    an empty entry probe and an empty return probe on every TLS
           function agentsight hooks in the processes running now (the
           cost of the traps alone: the floor of any uprobe capture)
  unread   agentsight's own ssl.bpf.o, attached the same way, its ring
           never read (the BPF work without the consumer competing for CPU)
  drain    the same, its ring drained as agentsight drains it, each record
           copied out and dropped (the consumer's least possible work)
  decode   drain, then decode each record into an event and drop it
  work:US  drain, then spin US microseconds of CPU per record taken (the
           CPU time of an analysis, without its memory traffic)

Prints `ready` on stderr once attached; detaches on SIGINT/SIGTERM, and
then (modes that read the ring) `records taken: N`.
Run as root from the repository: python3 bench/workers/floor_probes.py MODE [OBJECT]
(OBJECT: another build of ssl.bpf.o for `unread`, to compare BPF changes).
"""
from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import build_bpf  # noqa: E402
from agentsight.bpf.object import BPF_TRACE_UPROBE_MULTI, BpfObject  # noqa: E402
from agentsight.bpf.ring import RingReader  # noqa: E402
from agentsight.cli import DEFAULT_RING_SIZE, _wakeup_bytes  # noqa: E402
from agentsight.collectors.decode import RecordDecoder  # noqa: E402
from agentsight.collectors.live import POLL_MS  # noqa: E402
from agentsight.collectors.base import Filters  # noqa: E402
from agentsight.collectors.ssl import attach_tls_file  # noqa: E402
from agentsight.collectors.tls.discovery import Discovery  # noqa: E402

UNREAD_RING = 256 << 20  # larger than a benchmark round writes


def consume(obj: BpfObject, stop: threading.Event, decode: bool, work_ns: int) -> int:
    """Drains the ring until stopped; returns how many records it took."""
    reader = RingReader()
    decoder = RecordDecoder()
    reader.add(obj)
    # CPU time, not wall time: a spin preempted midway still spends all of it.
    clock = time.thread_time_ns
    taken = 0
    try:
        while not stop.is_set():
            records = reader.poll(POLL_MS)
            taken += len(records)
            if decode and records:
                decoder.decode(records)
            if work_ns and records:
                until = clock() + work_ns * len(records)
                while clock() < until:
                    pass
    finally:
        reader.close()
    return taken


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    work_ns = 0
    if mode.startswith("work:"):
        try:
            work_ns = round(float(mode[5:]) * 1000)
        except (ValueError, OverflowError):  # not a number, nan, inf
            work_ns = -1
        if work_ns <= 0:
            print("work:US needs a positive number of microseconds, e.g. work:8", file=sys.stderr)
            return 2
        mode = "work"
    if mode not in ("empty", "unread", "drain", "decode", "work"):
        print(__doc__, file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="agentsight-floor-") as tmp:
        if mode == "empty":
            path = build_bpf.compile_one(build_bpf.find_clang(), Path(__file__).with_name("floor.bpf.c"), Path(tmp))
            enter, ret, ring = "floor_enter", "floor_return", 4096
        else:
            path = sys.argv[2] if len(sys.argv) > 2 else "ssl.bpf.o"
            enter, ret = "tls_enter", "tls_return"
            ring = UNREAD_RING if mode == "unread" else DEFAULT_RING_SIZE
        filters = Filters()
        # unread: wakeup_bytes above the ring size, so nobody is ever woken.
        wakeup = UNREAD_RING * 2 if mode == "unread" else _wakeup_bytes(ring)
        obj = BpfObject(str(path), filters.config(1 << 20, wakeup), ring,
                        disabled=frozenset({"notice_exec", "notice_openat_enter", "notice_openat_exit"}),
                        attach_types={enter: BPF_TRACE_UPROBE_MULTI, ret: BPF_TRACE_UPROBE_MULTI})
        discovery = Discovery()
        hooked = []
        try:
            for f in discovery.initial():
                attach_tls_file(obj, f, "multi", entry=enter, ret=ret)
                hooked.append(f.shown_path)
            print(f"ready: {mode} probes on {', '.join(hooked)}", file=sys.stderr, flush=True)
            if mode in ("drain", "decode", "work"):
                taken = consume(obj, stop, decode=mode == "decode", work_ns=work_ns)
                print(f"records taken: {taken}", file=sys.stderr, flush=True)
            else:
                stop.wait()
        finally:
            obj.close()
            discovery.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
