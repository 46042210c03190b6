#!/usr/bin/env python3
"""Decode rate of the hot path, side by side in one run: construct's parser,
the struct decoder derived from it, and the whole RecordDecoder (records ->
event dicts), with and without JSON encoding. No root needed.

    python bench/bench_decode.py [--records N] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentsight.collectors.decode import RecordDecoder  # noqa: E402
from agentsight.collectors.records import (  # noqa: E402
    EVENT_EXEC, EVENT_OPEN, EVENT_SSL, EXEC_EVENT, FAST, KIND_OFFSET, LAYOUTS, OPEN_EVENT, SSL_EVENT,
)

HEADER = dict(ts_ns=123456789, pid=4242, tid=4243, uid=1000, comm=b"python3".ljust(16, b"\0"))


def build(layout, fields: dict) -> bytes:
    """layout.build(fields), with the fields a newer layout added left empty."""
    from construct import Bytes

    empty = {sc.name: b"" if isinstance(getattr(sc, "subcon", None), Bytes) else 0
             for sc in layout.subcons if sc.name}
    return layout.build(empty | fields)


def ssl_record(n: int) -> bytes:
    data = (b"data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hello\"}}\n\n" * (n // 60 + 1))[:n]
    return build(SSL_EVENT, dict(HEADER, kind=EVENT_SSL, conn=7, latency_ns=1000, ret=n, len=n, offset=0,
                                data_len=n, truncated=0, gap=0, fn=3, dir=1, last=1, data=data))


def exec_record() -> bytes:
    args = b"curl\0-sS\0https://127.0.0.1:8443/v1/messages\0"
    return build(EXEC_EVENT, dict(HEADER, kind=EVENT_EXEC, ppid=1, filename_len=13, args_len=len(args),
                                 args_truncated=0, filename=b"/usr/bin/curl", args=args))


def open_record() -> bytes:
    path = b"/home/user/project/src/main.py"
    return build(OPEN_EVENT, dict(HEADER, kind=EVENT_OPEN, ret=3, flags=0o2101, path_len=len(path), path=path))


def rate(fn, items, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - t)
    return len(items) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    n = args.records
    mixes = {
        "ssl 100 B": [ssl_record(100)] * n,
        "ssl 16 KiB": [ssl_record(16384)] * (n // 10),
        "process (exec+open)": [exec_record(), open_record()] * (n // 2),
    }
    results = []
    for name, records in mixes.items():
        construct_rate = rate(lambda rs: [LAYOUTS[r[KIND_OFFSET]].parse(r) for r in rs],
                              records[: max(len(records) // 20, 1000)])
        fast_rate = rate(lambda rs: [FAST[r[KIND_OFFSET]].decode(r) for r in rs], records)
        decoder = RecordDecoder(clock_offset_ns=0)
        full_rate = rate(decoder.decode, records)
        dumps = orjson.dumps
        json_rate = rate(lambda rs: [dumps(e.to_json()) for e in decoder.decode(rs)], records)
        # The least any JSON-lines output can cost: the payload string alone.
        payloads = [e.data.decode() for e in decoder.decode(records) if getattr(e, "data", None)]
        payload_rate = rate(lambda ps: [dumps(p) for p in ps], payloads) if payloads else None
        results.append(dict(mix=name, construct_per_s=round(construct_rate), struct_per_s=round(fast_rate),
                            decoder_per_s=round(full_rate), decoder_json_per_s=round(json_rate),
                            payload_json_per_s=round(payload_rate) if payload_rate else None,
                            decoder_vs_construct=round(full_rate / construct_rate, 1)))
    header = (f"{'records':<22}{'construct/s':>14}{'struct/s':>14}{'decoder/s':>14}{'+json/s':>14}"
              f"{'payload json/s':>16}{'decoder/construct':>19}")
    print(header)
    for r in results:
        payload = f"{r['payload_json_per_s']:,}" if r["payload_json_per_s"] else "-"
        print(f"{r['mix']:<22}{r['construct_per_s']:>14,}{r['struct_per_s']:>14,}{r['decoder_per_s']:>14,}"
              f"{r['decoder_json_per_s']:>14,}{payload:>16}{r['decoder_vs_construct']:>18}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
