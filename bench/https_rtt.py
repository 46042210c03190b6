"""Part 2: the worst case, tiny keep-alive HTTPS round trips on 127.0.0.1.

A Python HTTPS server (tests/support.py's, Nagle off) in one process; a
Python client (http.client) and a node client in two others; both ends are
probed. Each client makes N timed round trips on one connection with
nothing attached, with `agentsight trace` (and `agentsight ssl`, to separate
capture from analysis), and with the peer: bpftrace with a uprobe and a
uretprobe on the same functions of libssl.so.3 and node, printing the first
64 bytes of each call's buffer when it returns.

Three floors, from bench/workers/floor_probes.py, split what trace adds:
empty probes at agentsight's attach points (the traps alone, the least any
uprobe capture can cost); agentsight's BPF programs with nobody reading
their ring (the kernel side, without the consumer competing for the CPUs);
and the same ring drained as agentsight drains it, each record copied out
and dropped (the least work any consumer of these records can do). Two
more conditions drain the ring the same way and then decode each record
into an event, or spin a set CPU time per record, about trace's own:
beside trace they tell whether trace's ratio is its CPU time per record
alone or also the kind of work it is (a spin touches almost no memory; on
this VM a busy vCPU can even speed the workload up, since it is never
halted and woken).

Reported: the slowdown ratio (the median over rounds of each round's time
with / the same round's time without, and their lowest and highest), and
the CPU time the client and the server spent per round trip (over all rounds),
which tells what the probes cost the traced processes from what they
spent waiting.
"""
from __future__ import annotations

from pathlib import Path

from common import (LIBSSL, LIBSSL_FUNCTIONS, NODE, NODE_FUNCTIONS, PY, WORKERS, Agentsight, Bpftrace, FloorProbes,
                    NoTracer, Worker, bpftrace_script, cpu_seconds, median, rotated, scratch_dir, timed_rounds)

PEER_SCRIPT_FUNCTIONS = {LIBSSL: LIBSSL_FUNCTIONS, NODE: NODE_FUNCTIONS}
# About what trace spends per record (its row "consumer CPU per event").
WORK_US = 8
WORK_FLOOR = f"ring drained, then {WORK_US} µs of CPU per record"
DECODE_FLOOR = "ring drained, records decoded"


def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    rounds = 3 if quick else 7
    n = 400 if quick else 2000
    with scratch_dir("https") as tmp:
        tmp = Path(tmp)
        server = Worker([PY, str(WORKERS / "https_server.py"), str(tmp)], "https_server")
        port = str(server.info["port"])
        clients = {"python client": Worker([PY, str(WORKERS / "https_client.py"), port], "https_client.py"),
                   "node client": Worker([NODE, str(WORKERS / "https_client.js"), port], "https_client.js")}
        sessions = {
            "off": lambda: NoTracer(),
            "agentsight trace": lambda: Agentsight(["trace"], tmp / "trace.jsonl"),
            "agentsight ssl": lambda: Agentsight(["ssl"], tmp / "ssl.jsonl"),
            "bpftrace (peer)": lambda: Bpftrace(bpftrace_script(PEER_SCRIPT_FUNCTIONS), tmp),
            "floor: empty probes": lambda: FloorProbes("empty"),
            "floor: BPF, no consumer": lambda: FloorProbes("unread"),
            "floor: BPF, ring drained": lambda: FloorProbes("drain"),
            DECODE_FLOOR: lambda: FloorProbes("decode"),
            WORK_FLOOR: lambda: FloorProbes(f"work:{WORK_US}"),
        }
        times = {s: {c: [] for c in clients} for s in sessions}
        # CPU time of the traced processes (client and server), and the round
        # trips it was spent on: what the probes cost them, apart from waiting.
        # Summed over all rounds.
        traced_cpu = {s: {c: 0.0 for c in clients} for s in sessions}
        traced_trips = {s: {c: 0 for c in clients} for s in sessions}
        stats = {s: [] for s in sessions}
        try:
            for c in clients.values():                      # warm up
                c.call(f"run {n // 4}")
            for r in timed_rounds("https", rounds, cfg):
                for s in rotated(list(sessions), r):
                    tracer = sessions[s]()
                    try:
                        for name in rotated(list(clients), r):
                            pids = (clients[name].pid, server.pid)
                            cpu0 = [cpu_seconds(p) for p in pids]
                            res = clients[name].call(f"run {n}")
                            cpu1 = [cpu_seconds(p) for p in pids]
                            if "error" in res:
                                raise RuntimeError(f"{name}: {res['error']}")
                            times[s][name].append(res["ns"] / n)
                            if None not in cpu0 + cpu1:
                                traced_cpu[s][name] += sum(b - a for a, b in zip(cpu0, cpu1))
                                traced_trips[s][name] += n
                    finally:
                        stats[s].append(tracer.stop())
        finally:
            for c in clients.values():
                c.close()
            server.close()

    out = {"round_trips": n, "rounds": len(times["off"]["python client"]), "clients": {}, "tracers": {}}
    for name in clients:
        base = median(times["off"][name])
        out["clients"][name] = {"off_us_per_round_trip": round(base / 1000, 1)}
        spent, trips = traced_cpu["off"][name], traced_trips["off"][name]
        if trips:
            out["clients"][name]["off_traced_cpu_us_per_round_trip"] = round(spent / trips * 1e6, 1)
        for s in sessions:
            if s == "off":
                continue
            med = median(times[s][name])
            # Each against the `off` of its own round: the machine's speed
            # drifts between rounds, less within one.
            per_round = [x / o for x, o in zip(times[s][name], times["off"][name])]
            out["clients"][name][s] = {"us_per_round_trip": round(med / 1000, 1), "ratio": round(median(per_round), 3),
                                       "ratio_range": [round(min(per_round), 3), round(max(per_round), 3)],
                                       "samples_us": [round(x / 1000, 1) for x in times[s][name]]}
            spent, trips = traced_cpu[s][name], traced_trips[s][name]
            if trips:
                out["clients"][name][s]["traced_cpu_us_per_round_trip"] = round(spent / trips * 1e6, 1)
    for s in sessions:
        if s == "off":
            continue
        st = stats[s]
        out["tracers"][s] = {
            "events_per_session": median([x.get("events") or x.get("lines") for x in st]),
            "lost_records": sum(x.get("lost_records") or 0 for x in st),
            "vm_hwm_kb_max": max((x.get("vm_hwm_kb") or 0) for x in st),
            "ready_s": median([x.get("ready_s") for x in st]),
            "stop_s": median([x.get("stop_s") for x in st]),
        }
        cpu = [x["cpu_s"] / x["events"] * 1e6 for x in st if x.get("cpu_s") is not None and x.get("events")]
        if cpu:
            out["tracers"][s]["consumer_cpu_us_per_event"] = round(median(cpu), 2)
    return out


def rows(res: dict) -> list[tuple]:
    out = []
    for name, row in res["clients"].items():
        off_cpu = row.get("off_traced_cpu_us_per_round_trip")
        for s in ("agentsight trace", "agentsight ssl", "bpftrace (peer)", "floor: empty probes",
                  "floor: BPF, no consumer", "floor: BPF, ring drained", DECODE_FLOOR, WORK_FLOOR):
            if s in row:
                target = "<= 1.15x, < bpftrace" if s == "agentsight trace" else ""
                low, high = row[s].get("ratio_range", (row[s]["ratio"],) * 2)
                result = f"{row[s]['ratio']:.2f}x ({low:.2f}-{high:.2f}; {row[s]['us_per_round_trip']} µs)"
                cpu = row[s].get("traced_cpu_us_per_round_trip")
                if cpu is not None and off_cpu is not None:
                    result += f"; client+server CPU {cpu} µs (off {off_cpu})"
                out.append((f"HTTPS round trips, {name} (off {row['off_us_per_round_trip']} µs)", s, result, target))
    for s, t in res["tracers"].items():
        if "consumer_cpu_us_per_event" in t:
            out.append(("HTTPS round trips: consumer CPU per event (both clients)", s,
                        f"{t['consumer_cpu_us_per_event']} µs", "<= 4 µs" if s == "agentsight trace" else ""))
    return out
