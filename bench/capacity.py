"""Part 4: consumer capacity, the event rate the user-space pipeline sustains.

Load generators at a controlled rate, each filtered with --pid so nothing
else counts:
  - process events: bench/workers/open_flood.c, open()+close() of one path,
    under `agentsight process --pid`;
  - SSL events of 100 B and 16 KiB: bench/workers/ssl_pingpong.c (SSL_write
    + SSL_read over a memory BIO pair, each call one event), under
    `agentsight ssl --pid`.
The rate doubles from a start until a step is lost: a step counts as kept up
when the summary reports no record lost in the ring buffer and the consumer
was idle again within MAX_LAG_S of the load's end (so a backlog parked in the
ring does not pass for capacity). The full run then bisects between
the last good and first bad rate, and the loss rate at twice the best rate
is measured. Output goes to /dev/null: capture, decode and JSON encoding
count, the disk does not. A generator that cannot reach the rate asked
(probes slow it down) makes the figure a lower bound.

The ramp needs a generator faster than the consumer, and probes slow the
generators down (an SSL call costs ~11 µs of uprobe), so the consumer's own
ceiling is also measured directly: with the consumer stopped (SIGSTOP), the
generator puts a known number of events into the (default) ring,
about half full; then the consumer is continued and timed until it has
written the last of them (its output file stops growing): events / that
time is its drain rate. And each ramp step records the consumer's CPU
time: events / CPU seconds is the rate at which it would fill one CPU.

For scale, bench/bench_decode.py's decode-only rates (records already in
memory) are run alongside and reported with it.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

from common import BENCH, PY, WORKERS, Agentsight, Worker, certificate, compile_c, cpu_seconds, log, scratch_dir

from agentsight.collectors.live import REORDER_NS

MAX_LAG_S = 0.5


def wait_idle(pid: int, since: float, limit: float = 30.0) -> float:
    """Seconds from `since` until the process used under 10 % of a CPU over 100 ms."""
    prev = cpu_seconds(pid)
    while time.monotonic() - since < limit:
        time.sleep(0.1)
        cur = cpu_seconds(pid)
        if cur is None or prev is None:
            break
        if cur - prev <= 0.01:
            return max(0.0, time.monotonic() - 0.1 - since)
        prev = cur
    return time.monotonic() - since


def step(gen: Worker, args: list[str], kind: str, rate: float, secs: float, extra: str = "") -> dict:
    tracer = Agentsight([*args, "--pid", str(gen.pid)])
    try:
        cpu0 = cpu_seconds(tracer.pid)
        res = gen.call(f"rate {rate:.0f} {secs} {extra}".strip(), timeout=secs * 10 + 60)
        lag = wait_idle(tracer.pid, time.monotonic())
        cpu = (cpu_seconds(tracer.pid) or 0) - (cpu0 or 0)
    finally:
        summary = tracer.stop()
    got = summary["counts"].get(kind, 0)
    lost = summary.get("lost_records") or 0
    achieved = res["calls"] / res["seconds"]
    return {"requested_per_s": round(rate), "achieved_per_s": round(achieved), "events": got, "lost_records": lost,
            "loss_rate": round(lost / max(got + lost, 1), 4), "drain_lag_s": round(lag, 2),
            "consumer_per_s": round(got / (res["seconds"] + lag)),
            # the consumer's CPU while the load ran, and the rate at which it would fill one CPU
            "consumer_cpu_pct": round(100 * cpu / res["seconds"], 1),
            "projected_per_s": round(got / cpu) if cpu > 0.05 else None,
            "generator_limited": achieved < 0.9 * rate,
            "kept_up": lost == 0 and lag <= MAX_LAG_S and summary["rc"] == 0}


def ramp(gen: Worker, args: list[str], kind: str, start: float, secs: float, bisect: int, extra: str,
         deadline: float) -> dict:
    steps: list[dict] = []
    good: dict | None = None
    bad: dict | None = None
    rate = start
    while time.monotonic() < deadline:
        s = step(gen, args, kind, rate, secs, extra)
        steps.append(s)
        log(f"capacity {kind} {extra}: {s}")
        if not s["kept_up"]:
            bad = s
            break
        good = s
        if s["generator_limited"]:
            break
        rate *= 2
    for _ in range(bisect if good and bad else 0):
        if time.monotonic() > deadline:
            break
        rate = math.sqrt(good["achieved_per_s"] * bad["requested_per_s"])
        s = step(gen, args, kind, rate, secs, extra)
        steps.append(s)
        log(f"capacity {kind} {extra}: {s}")
        if s["kept_up"] and not s["generator_limited"]:
            good = s
        elif not s["kept_up"]:
            bad = s
        else:
            break
    kept = [s for s in steps if s["kept_up"]]
    best = max((s["achieved_per_s"] for s in kept), default=None)
    top = max(steps, key=lambda s: s["achieved_per_s"])
    # The generator topped out without a loss: twice the rate cannot be made.
    limited = bool(kept) and top["kept_up"] and top["generator_limited"]
    at_double = None
    if best and not limited:
        near = [s for s in steps if abs(s["requested_per_s"] / (2 * best) - 1) < 0.15]
        if near:
            at_double = near[-1]
        else:
            at_double = step(gen, args, kind, 2 * best, secs, extra)
            steps.append(at_double)
            log(f"capacity {kind} {extra}: {at_double}")
        if at_double["generator_limited"] and at_double["kept_up"]:
            at_double = None        # the generator could not make twice the rate
    top = max(steps, key=lambda s: s["achieved_per_s"])
    proj = [s["projected_per_s"] for s in kept if s["projected_per_s"] and s["achieved_per_s"] >= 0.5 * best]
    return {"max_lossless_per_s": best, "generator_limited": limited, "generator_max_per_s": top["achieved_per_s"],
            "projected_per_s": round(min(proj)) if proj else None,
            "at_double": at_double, "steps": steps}


def drain(gen: Worker, args: list[str], kind: str, command: str, tmp: Path) -> dict:
    """The consumer's drain rate over a backlog made while it was stopped."""
    out = Path("/dev/shm" if os.path.isdir("/dev/shm") else tmp) / f"agentsight-bench-drain-{os.getpid()}.jsonl"
    tracer = Agentsight([*args, "--pid", str(gen.pid)], out)
    try:
        os.kill(tracer.pid, signal.SIGSTOP)
        try:
            gen.call(command, timeout=120)
            # Live capture hands events on once they are REORDER_NS old: let
            # the backlog age first, so what is timed is the draining alone.
            time.sleep(REORDER_NS / 1e9 + 0.05)
        finally:
            t0 = time.monotonic()
            os.kill(tracer.pid, signal.SIGCONT)
        size, last = 0, t0
        # the whole backlog may come out as one batch: wait for the first write, then for the last
        while time.monotonic() - t0 < 120 and (size == 0 or time.monotonic() - last < 1.0):
            cur = out.stat().st_size if out.exists() else 0
            if cur != size:
                size, last = cur, time.monotonic()
            time.sleep(0.005)
        seconds = last - t0
    finally:
        summary = tracer.stop()
        out.unlink(missing_ok=True)
    got = summary["counts"].get(kind, 0)
    return {"events": got, "seconds": round(seconds, 3), "drain_per_s": round(got / max(seconds, 1e-3)),
            "lost_records": summary.get("lost_records"), "vm_hwm_kb": summary.get("vm_hwm_kb"),
            "output_bytes": size}


def decode_only(records: int) -> dict:
    """bench/bench_decode.py, run as is: {mix: its row}."""
    with scratch_dir("decode") as tmp:
        out = Path(tmp) / "decode.json"
        subprocess.run([PY, str(BENCH / "bench_decode.py"), "--records", str(records), "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL, timeout=600)
        return {r["mix"]: r for r in json.loads(out.read_text())}


def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    secs = 1.5 if quick else 5.0
    bisect = 0 if quick else 2
    deadline = time.monotonic() + cfg["budget_s"]
    out: dict = {"seconds_per_step": secs, "max_lag_s": MAX_LAG_S}
    with scratch_dir("capacity") as tmp:
        tmp = Path(tmp)
        cert, key = certificate(tmp)
        flood = compile_c(WORKERS / "open_flood.c", tmp)
        pingpong = compile_c(WORKERS / "ssl_pingpong.c", tmp, ("-lssl", "-lcrypto"))
        # Missing: each open is one syscall that fails, the fastest event to make.
        target = tmp / "missing" / "file.txt"
        kinds = [  # name, generator, agentsight args, event kind, first rate, size, backlog command
            ("process (open)", [str(flood), str(target)], ["process"], "open", 100_000 if quick else 50_000, "",
             "count 150000"),
            ("ssl 100 B", [str(pingpong), str(cert), str(key)], ["ssl"], "ssl", 20_000, "100",
             "calls 40000 100"),
            ("ssl 16 KiB", [str(pingpong), str(cert), str(key)], ["ssl"], "ssl", 5_000, "16384",
             "calls 500 16384"),
        ]
        for i, (name, argv, args, kind, start, extra, backlog) in enumerate(kinds):
            gen = Worker(argv, name)
            try:
                share = (deadline - time.monotonic()) / (len(kinds) - i)
                out[name] = ramp(gen, args, kind, start, secs, bisect, extra, time.monotonic() + share)
                out[name]["drain"] = drain(gen, args, kind, backlog, tmp)
                log(f"capacity {name}: drain {out[name]['drain']}")
            finally:
                gen.close()
    try:
        dec = decode_only(50_000 if quick else 200_000)
        mixes = {"process (open)": "process (exec+open)", "ssl 100 B": "ssl 100 B", "ssl 16 KiB": "ssl 16 KiB"}
        out["decode_only_per_s"] = {k: dec[m]["decoder_json_per_s"] for k, m in mixes.items() if m in dec}
        out["payload_json_per_s"] = {k: dec[m]["payload_json_per_s"] for k, m in mixes.items()
                                     if dec.get(m, {}).get("payload_json_per_s")}
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        log(f"capacity: bench_decode.py failed: {exc}")
        out["decode_only_per_s"] = {}
    return out


def rows(res: dict) -> list[tuple]:
    out = []
    targets = {"process (open)": ">= 200k/s", "ssl 100 B": ">= 100k/s", "ssl 16 KiB": ">= 100k/s"}
    for name, target in targets.items():
        r = res.get(name)
        if not r:
            continue
        best = r["max_lossless_per_s"]
        limited = " (generator maxed out: a lower bound)" if r["generator_limited"] else ""
        d = r["at_double"]
        double = (f"; at {d['achieved_per_s'] / 1000:.0f}k/s: {d['loss_rate'] * 100:.1f} % lost"
                  if d else f"; 2x not reachable (generator max {r['generator_max_per_s'] / 1000:.0f}k/s)")
        dr = r.get("drain")
        drained = f"; drains a backlog at {dr['drain_per_s'] / 1000:.0f}k/s" if dr else ""
        dec = res.get("decode_only_per_s", {}).get(name)
        ceiling = f" (decode+JSON alone {dec / 1000:.0f}k/s" if dec else ""
        payload = res.get("payload_json_per_s", {}).get(name)
        if ceiling:
            ceiling += f"; JSON of the payload alone {payload / 1000:.0f}k/s)" if payload else ")"
        value = f"{best / 1000:.0f}k/s{limited}" if best else "none lossless"
        if r.get("projected_per_s"):
            value += f"; 1 CPU of consumer = {r['projected_per_s'] / 1000:.0f}k/s"
        out.append((f"capacity, {name}", f"agentsight {'process' if 'process' in name else 'ssl'} --pid",
                    value + double + drained + ceiling, target))
    return out
