"""Part 1: what the hooks add to one TLS call.

Two workload processes make TLS calls with no syscall in the loop (a client
and a server joined by memory BIOs): CPython's ssl module (SSL_write_ex /
SSL_read_ex) and a small C program built here against the system libssl
(SSL_write / SSL_read). Each is timed with nothing attached, with
`agentsight ssl --pid` (only that process), with `agentsight ssl` (every
process), and, to see where the time goes, with bpftrace's empty uprobes
(entry only; entry + return) on the same functions.

An experiment rides along: agentsight's own BPF programs (the prebuilt
ssl.bpf.o), attached by this process through agentsight's bindings, once at
the exported functions (as agentsight does) and once at the internal
functions they call (ssl_write_internal / ssl_read_internal), whose first
instruction the kernel can emulate instead of single-stepping.

Reported: median µs added per call against the same run's `off`.
"""
from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

from common import (LIBSSL, PY, WORKERS, Agentsight, Bpftrace, NoTracer, Worker, bpftrace_script, certificate,
                    compile_c, log, median, note_foreign, quiet_round, rotated, scratch_dir)

PAYLOAD = 64
FUNCTIONS = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"]
# enum ssl_fn in csrc/events.h
COOKIE = {"SSL_write": 0, "SSL_read": 1, "SSL_write_ex": 2, "SSL_read_ex": 3}


# --- the placement experiment -----------------------------------------------------------
def _file_offset(path: str, vaddr: int) -> int:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise ValueError(f"{vaddr:#x} is in no segment of {path}")


def _vaddr(path: str, offset: int) -> int:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_offset"] <= offset < seg["p_offset"] + seg["p_filesz"]:
                return offset - seg["p_offset"] + seg["p_vaddr"]
    raise ValueError(f"{offset:#x} is in no segment of {path}")


def placements(path: str = LIBSSL) -> dict[str, list[tuple[int, int]]]:
    """{placement: [(file offset, cookie)]}: the exported functions, and the
    internal ones that SSL_write_ex / SSL_read_ex (OpenSSL 3.0) call first:
    `sub $8,%rsp; call rel32` (both SSL_write and SSL_write_ex end up there)."""
    from agentsight.collectors.tls.discovery import Discovery

    discovery = Discovery()
    try:
        functions = discovery.binary(path).library.functions
    finally:
        discovery.close()
    exported = [(functions[fn], COOKIE[fn]) for fn in FUNCTIONS]
    internal = []
    data = Path(path).read_bytes()
    for fn in ("SSL_write_ex", "SSL_read_ex"):
        off = functions[fn]
        code = data[off:off + 9]
        if code[:5] != b"\x48\x83\xec\x08\xe8":
            raise ValueError(f"{fn} does not start with sub $8,%rsp; call: {code.hex()}")
        target = _vaddr(path, off) + 9 + struct.unpack("<i", code[5:9])[0]
        internal.append((_file_offset(path, target), COOKIE[fn]))
    return {"exported": exported, "internal": internal}


class DirectProbes:
    """agentsight's ssl.bpf.o programs attached at chosen offsets for the given
    pids (uprobe_multi links, as agentsight does on this kernel), its ring
    drained by a thread of this process (copied out, not decoded)."""

    def __init__(self, targets: list[tuple[int, int]], pids: list[int], path: str = LIBSSL):
        from agentsight.bpf.object import BPF_TRACE_UPROBE_MULTI, BpfObject
        from agentsight.bpf.ring import RingReader
        from agentsight.collectors.base import Filters

        multi = {"tls_enter": BPF_TRACE_UPROBE_MULTI, "tls_return": BPF_TRACE_UPROBE_MULTI}
        self.obj = BpfObject("ssl.bpf.o", Filters().config(1 << 20, 256 << 10), 32 << 20, frozenset(), multi)
        offsets, cookies = [o for o, _ in targets], [c for _, c in targets]
        for pid in pids:
            self.obj.attach_uprobe_multi("tls_enter", path, offsets, cookies, pid=pid)
            self.obj.attach_uprobe_multi("tls_return", path, offsets, cookies, retprobe=True, pid=pid)
        self.reader = RingReader()
        self.reader.add(self.obj)
        self.records = 0
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        self.pid = None

    def _drain(self) -> None:
        while not self._stop:
            self.records += len(self.reader.poll(100))

    def stop(self) -> dict:
        self._stop = True
        self._thread.join(5)
        self.obj.detach()
        self.records += len(self.reader.drain())
        lost = self.obj.stats(2)[0]
        self.reader.close()
        self.obj.close()
        return {"events": self.records, "lost_records": lost}


# --- the benchmark ---------------------------------------------------------------------------
def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    rounds = 2 if quick else 5
    n = 4000 if quick else 10000       # round trips (2 calls) per batch
    batches = 3                         # per worker and session; their median counts
    with scratch_dir("percall") as tmp:
        tmp = Path(tmp)
        cert, key = certificate(tmp)
        exe = compile_c(WORKERS / "ssl_pingpong.c", tmp, ("-lssl", "-lcrypto"))
        workers = {
            "python (SSL_write_ex/SSL_read_ex)": Worker([PY, str(WORKERS / "py_ssl_pingpong.py"), str(cert), str(key)],
                                                         "py_ssl_pingpong"),
            "C (SSL_write/SSL_read)": Worker([str(exe), str(cert), str(key)], "ssl_pingpong"),
        }
        try:
            return _measure(workers, rounds, n, batches, tmp, cfg)
        finally:
            for w in workers.values():
                w.close()


def _measure(workers: dict[str, Worker], rounds: int, n: int, batches: int, tmp: Path, cfg: dict) -> dict:
    bt_fns = {LIBSSL: FUNCTIONS}
    try:
        places = placements()
    except Exception as exc:  # another libssl build: skip the experiment
        log(f"percall: placement experiment skipped: {exc}")
        places = {}

    # name -> (start(list of workers) -> tracer, one session per worker?)
    sessions: dict[str, tuple] = {
        "off": (lambda ws: NoTracer(), False),
        "agentsight ssl --pid": (lambda ws: Agentsight(["ssl", "--pid", str(ws[0].pid)]), True),
        "agentsight ssl (all processes)": (lambda ws: Agentsight(["ssl"]), False),
        "bpftrace empty uprobe": (lambda ws: Bpftrace(bpftrace_script(bt_fns, "entry"), tmp), False),
        "bpftrace empty uprobe+uretprobe": (lambda ws: Bpftrace(bpftrace_script(bt_fns, "empty"), tmp), False),
    }
    if places:
        sessions["agentsight programs, exported fns (harness control)"] = (
            lambda ws: DirectProbes(places["exported"], [w.pid for w in ws]), False)
        sessions["agentsight programs, ssl_*_internal (experiment)"] = (
            lambda ws: DirectProbes(places["internal"], [w.pid for w in ws]), False)

    # samples[session][worker] = [ns per call, one per round]
    samples = {s: {w: [] for w in workers} for s in sessions}
    events = {s: {w: [] for w in workers} for s in sessions}
    deadline = time.monotonic() + cfg["budget_s"]
    for w in workers.values():                              # warm up
        w.call(f"calls {n} {PAYLOAD}")
    for r in range(rounds):
        if r and time.monotonic() > deadline:
            log("percall: time budget reached, fewer rounds")
            break
        quiet_round("percall", 5 if cfg["quick"] else 20)
        for name in rotated(list(sessions), r):
            start, per_worker = sessions[name]
            groups = [[w] for w in workers] if per_worker else [list(workers)]
            for group in groups:
                tracer = start([workers[g] for g in group])
                try:
                    per = {}
                    for g in group:
                        res = [workers[g].call(f"calls {n} {PAYLOAD}") for _ in range(batches)]
                        per[g] = median([x["ns"] / x["calls"] for x in res])
                        samples[name][g].append(per[g])
                finally:
                    summary = tracer.stop()
                if summary.get("events") is not None:   # for `all`, other processes' calls count too
                    for g in group:
                        events[name][g].append(summary["events"] / (batches * 2 * n * len(group)))
        note_foreign("percall")
        log(f"percall: round {r + 1}/{rounds} done")

    results = {"payload_bytes": PAYLOAD, "round_trips_per_batch": n, "rounds": len(samples["off"][next(iter(workers))]),
               "placements": {k: [hex(o) for o, _ in v] for k, v in places.items()}, "workers": {}}
    for w in workers:
        base = median(samples["off"][w])
        row = {"off_ns_per_call": round(base, 1), "sessions": {}}
        for s in sessions:
            if s == "off":
                continue
            med = median(samples[s][w])
            row["sessions"][s] = {
                "ns_per_call": round(med, 1),
                "added_us_per_call": round((med - base) / 1000, 2),
                "samples_ns": [round(x, 1) for x in samples[s][w]],
                "events_per_call": round(median(events[s][w]), 3) if events[s][w] else None,
            }
        results["workers"][w] = row
    return results


def rows(res: dict) -> list[tuple]:
    out = []
    for w, row in res["workers"].items():
        for s, v in row["sessions"].items():
            target = "<= 3 µs" if s == "agentsight ssl --pid" else ""
            out.append((f"per-call {w}", s, f"+{v['added_us_per_call']:.2f} µs/call", target))
    return out
