#!/usr/bin/env python3
"""The web UI on a large session: page load in Chromium and API latency.

Builds (once, then kept) a synthetic session of about --megabytes MB with
tests/web_support.py: a long conversation growing with every call, its raw
TLS payloads, shells running many programs that write many files, with
their links. Then runs `python -m agentsight serve` on it and measures:
the time until the address is printed, each API answer the page uses (the
first after start, when the server's caches are cold, and the median of
the next five) with its size, and in Chromium the time from opening the
address until the timeline shows every LLM call, a zoom, and a search.

    python3 bench/bench_web.py                    # 500 MB
    python3 bench/bench_web.py --megabytes 100 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from web_support import build_session  # noqa: E402

CACHE = Path(os.environ.get("AGENTSIGHT_TEST_CACHE", "/var/cache/agentsight-test"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def session_file(megabytes: int, rebuild: bool) -> tuple[Path, dict]:
    path = CACHE / f"bench-web-{megabytes}mb.db"
    facts_path = path.with_suffix(".json")
    if rebuild or not path.exists() or not facts_path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        for p in (path, facts_path):
            p.unlink(missing_ok=True)
        started = time.monotonic()
        facts = build_session(path, megabytes, programs_per_tool=40, files_per_tool=200)
        facts["build_seconds"] = round(time.monotonic() - started, 1)
        facts_path.write_text(json.dumps(facts))
    return path, json.loads(facts_path.read_text())


def get(url: str) -> tuple[float, int, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - started, len(body), json.loads(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megabytes", type=int, default=500)
    ap.add_argument("--rebuild", action="store_true", help="build the session again")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    path, facts = session_file(args.megabytes, args.rebuild)
    size = path.stat().st_size
    print(f"session {path}: {size / 1e6:.0f} MB, {facts['calls']} LLM calls, {facts['processes']} processes, "
          f"{facts['files']} file changes")
    figures: dict = {"session_mb": round(size / 1e6), **{k: facts[k] for k in ("calls", "processes", "files")}}

    def start() -> tuple[subprocess.Popen, str, float]:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "agentsight", "serve", str(path), "--port", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        return proc, line.split(" at ", 1)[1].split()[0], time.monotonic() - started

    proc, url, took = start()
    figures["address_printed_s"] = round(took, 3)
    try:
        def u(what: str, **params) -> str:
            origin, token = url.split("/?token=")
            return f"{origin}/api/s/0/{what}?" + urllib.parse.urlencode({"token": token, **params})

        _, _, summary = get(u("summary"))
        lo, hi = summary["bounds"]
        _, _, calls = get(u("timeline", kinds="llm"))
        last = calls["items"][-1]["id"]
        _, _, roots = get(u("children"))
        agent = roots["nodes"][0]["id"]
        _, _, kids = get(u("children", parent=agent))
        shell = kids["nodes"][len(kids["nodes"]) // 2]["id"]
        _, _, call = get(u("call", id=last))
        system_part = call["conversation"]["system"][0].get("address", "s.0")
        mid = (lo + hi) // 2
        cases = [
            ("summary", "summary", {}),
            ("timeline, whole session", "timeline", {}),
            ("timeline, 1% of it", "timeline", {"from": mid, "to": mid + (hi - lo) // 100}),
            ("timeline, text search", "timeline", {"q": "module_7_3.o"}),
            ("timeline, one process", "timeline", {"proc": shell}),
            ("process tree, a page of children", "children", {"parent": agent}),
            ("one process", "process", {"id": shell}),
            ("the largest LLM call", "call", {"id": last}),
            ("its system prompt, whole", "text", {"id": last, "part": system_part}),
        ]
        # A fresh server, so each answer's first time is with its caches cold.
        proc.send_signal(2)
        proc.wait(30)
        proc, url, _ = start()
        rows = []
        for name, what, params in cases:
            first, nbytes, _ = get(u(what, **params))
            warm = statistics.median(get(u(what, **params))[0] for _ in range(5))
            rows.append((name, first, warm, nbytes))
        print(f"\n{'answer':<36} {'first':>9} {'then':>9} {'size':>10}")
        for name, first, warm, nbytes in rows:
            print(f"{name:<36} {first * 1000:7.0f} ms {warm * 1000:7.0f} ms {nbytes / 1e3:8.0f} KB")
        figures["api"] = [{"answer": n, "first_ms": round(f * 1000), "then_ms": round(w * 1000), "bytes": b}
                          for n, f, w, b in rows]
        # And the page, on a fresh server too.
        proc.send_signal(2)
        proc.wait(30)
        proc, url, _ = start()

        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for attempt in ("first", "again"):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                started = time.perf_counter()
                page.goto(url)
                expect(page.locator(".row.llm")).to_have_count(facts["calls"], timeout=120_000)
                loaded = time.perf_counter() - started
                figures[f"page_load_{attempt}_s"] = round(loaded, 3)
                print(f"\npage load ({attempt}): {loaded:.2f} s until all {facts['calls']} calls are shown")
                if attempt == "again":
                    box = page.locator(".lane-llm .track").bounding_box()
                    started = time.perf_counter()
                    page.mouse.move(box["x"] + box["width"] * 0.40, box["y"] + 5)
                    page.mouse.down()
                    page.mouse.move(box["x"] + box["width"] * 0.42, box["y"] + 5, steps=4)
                    page.mouse.up()
                    expect(page.locator(".row.llm")).not_to_have_count(facts["calls"], timeout=60_000)
                    figures["zoom_s"] = round(time.perf_counter() - started, 3)
                    started = time.perf_counter()
                    page.locator("#search").fill("module_7_3.o")
                    expect(page.locator(".row.llm")).to_have_count(0, timeout=60_000)
                    expect(page.locator(".row.file").first).to_be_visible(timeout=60_000)
                    figures["search_s"] = round(time.perf_counter() - started - 0.25, 3)  # less the typing pause
                    print(f"zoom to 2% of the session: {figures['zoom_s']:.2f} s; search: {figures['search_s']:.2f} s")
                page.close()
            browser.close()
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
