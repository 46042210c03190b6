#!/usr/bin/env python3
"""Locates the TLS functions in every Bun build on the npm registry and
prints a table: one row per build, whether SSL_write, SSL_read and
SSL_do_handshake were found, how long the first analysis took, and (with
--fetch, as root) whether a real fetch() to a local HTTPS server was
captured in plaintext with those probes.

    sudo scripts/bun-matrix.py                  # every linux-x64 build from 1.1.0 on
    sudo scripts/bun-matrix.py --fetch          # ... and run each one that runs here
    scripts/bun-matrix.py --compile             # ... and locate in a `bun build --compile` of each
    scripts/bun-matrix.py --only 'musl-1\\.3'    # a subset (regex on variant-version)

Builds are fetched with `npm pack` into --cache (default
/var/cache/agentsight-test/bun-builds) and kept there as tarballs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

VARIANTS = ("x64", "x64-baseline", "x64-musl", "x64-musl-baseline")
DEFAULT_CACHE = Path("/var/cache/agentsight-test/bun-builds")
FETCH_SCRIPT = textwrap.dedent(
    """
    const [url, body] = process.argv.slice(2);
    const r = await fetch(url, {method: "POST", body, tls: {rejectUnauthorized: false}});
    process.stdout.write(await r.text());
    """
)


def version_key(version: str) -> tuple:
    base, _, pre = version.partition("-")
    return tuple(int(x) for x in base.split(".")) + ((0, pre) if pre else (1, ""))


def releases(variant: str, since: str = "1.1.0") -> list[str]:
    out = subprocess.run(["npm", "view", f"@oven/bun-linux-{variant}", "versions", "--json"],
                         capture_output=True, text=True, check=True).stdout
    floor = version_key(since)[:3]
    return sorted((v for v in json.loads(out) if version_key(v)[:3] >= floor), key=version_key)


def bun_binary(cache: Path, variant: str, version: str) -> Path:
    """The extracted executable, kept in the cache with its tarball."""
    import support

    support.BUN_CACHE = cache
    return support.bun_build(variant, version)


def locate(binary: Path) -> dict:
    from agentsight.collectors.tls import boringssl

    started = time.monotonic()
    try:
        found = boringssl.locate(str(binary))
    except (boringssl.NotBoringSSL, boringssl.AnalysisError) as exc:
        return {"ok": False, "seconds": time.monotonic() - started, "error": str(exc)}
    return {"ok": True, "seconds": time.monotonic() - started, "functions": found.functions, "lines": found.lines}


def compiled_located(binary: Path, row: dict, workdir: Path) -> str:
    """Builds a single-file executable with this build (`bun build
    --compile`) and locates the functions in it: "ok" when they are the
    build's own, or what went wrong."""
    script = workdir / "fetch.mjs"
    script.write_text(FETCH_SCRIPT)
    program = workdir / "compiled"
    try:
        subprocess.run([str(binary), "build", "--compile", str(script), "--outfile", str(program)],
                       check=True, capture_output=True, timeout=300, cwd=workdir)
    except subprocess.CalledProcessError as exc:
        return f"bun build --compile failed: {exc.stderr[-200:]!r}"
    try:
        found = locate(program)
    finally:
        program.unlink(missing_ok=True)
    if not found["ok"]:
        return f"not located: {found['error']}"
    if found["functions"] != row["functions"]:
        return "located at other offsets than in the build itself"
    return "ok"


def runs_here(variant: str) -> bool:
    # musl builds need musl's libstdc++ and libgcc_s, which a glibc system lacks.
    return "musl" not in variant


def same_source(row: dict, rows: dict) -> str:
    """For a build that cannot run here: whether each function was found at
    the same ssl_lib.cc lines as in the glibc build of the same release,
    whose functions a fetch can check. Lines come from the source, not the
    compiler, so they match when the same functions were found."""
    glibc = row["variant"].replace("-musl", "")
    twin = rows.get((glibc, row["version"])) or rows.get((glibc, row["version"].split("-")[0]))
    if twin is None or not twin["ok"]:
        return "no glibc twin"
    if twin["lines"] != row["lines"]:
        return f"LINES DIFFER from {twin['variant']} {twin['version']}"
    nearest = "" if twin["version"] == row["version"] else f" {twin['version']}"
    return f"same lines as {twin['variant']}{nearest} (fetch {twin['fetch']})"


def fetch_captured(binary: Path, server, workdir: Path) -> str:
    """Runs a fetch() with the build under `agentsight ssl --binary` and
    checks both directions' plaintext; "ok" or what went wrong."""
    from support import RunningCapture, stream

    script = workdir / "fetch.mjs"
    script.write_text(FETCH_SCRIPT)
    marker = f"matrix-{binary.parent.name}"
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(workdir / "cache"))
    try:
        run = RunningCapture(["ssl", "--binary", str(binary)], workdir / "events.jsonl", env=env)
    except AssertionError as exc:
        return f"capture did not start: {str(exc)[-200:]}"
    try:
        proc = subprocess.Popen([str(binary), str(script), server.url + "/echo", marker],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    finally:
        events, _ = run.stop()
    if out != f"echo:{marker}".encode():
        return f"fetch failed: {err[-200:]!r}"
    sent, received = stream(events, proc.pid, "send"), stream(events, proc.pid, "recv")
    if not (sent.startswith(b"POST /echo HTTP/1.1\r\n") and sent.endswith(marker.encode())):
        return f"request not captured ({len(sent)} bytes sent seen)"
    if not received.endswith(f"echo:{marker}".encode()):
        return f"response not captured ({len(received)} bytes received seen)"
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the builds are kept")
    parser.add_argument("--only", help="regex on VARIANT-VERSION, e.g. 'x64-1\\.2\\.'")
    parser.add_argument("--since", default="1.1.0", help="oldest release (default 1.1.0)")
    parser.add_argument("--fetch", action="store_true", help="also run a captured fetch() with each build (root)")
    parser.add_argument("--compile", action="store_true",
                        help="also locate the functions in a `bun build --compile` executable of each build "
                             "that runs here")
    parser.add_argument("--json", metavar="FILE", help="write the rows here too")
    args = parser.parse_args()
    if args.fetch and os.geteuid() != 0:
        parser.error("--fetch loads BPF programs: run as root")

    builds = [(variant, version) for variant in VARIANTS for version in releases(variant, args.since)]
    if args.only:
        builds = [b for b in builds if re.search(args.only, f"{b[0]}-{b[1]}")]
    started = time.monotonic()
    rows = []
    by_build: dict[tuple[str, str], dict] = {}
    server = None
    with tempfile.TemporaryDirectory(prefix="bun-matrix-") as tmp:
        if args.fetch:
            from support import HttpsServer

            server = HttpsServer(Path(tmp))
        print(f"{'variant':<18} {'version':<26} {'located':<8} {'analysis':>9}  "
              + ("--compile  " if args.compile else "") + "fetch under ssl", flush=True)
        try:
            for variant, version in builds:
                binary = bun_binary(args.cache, variant, version)
                row = {"variant": variant, "version": version, **locate(binary)}
                if not row["ok"]:
                    row["fetch"] = "-"
                elif not args.fetch:
                    row["fetch"] = "not run"
                elif not runs_here(variant):
                    row["fetch"] = "not run (musl build): " + same_source(row, by_build)
                else:
                    workdir = Path(tempfile.mkdtemp(dir=tmp))
                    row["fetch"] = fetch_captured(binary, server, workdir)
                if args.compile:
                    row["compile"] = ("-" if not row["ok"] else "not run" if not runs_here(variant)
                                      else compiled_located(binary, row, Path(tempfile.mkdtemp(dir=tmp))))
                rows.append(row)
                by_build[(variant, version)] = row
                located = "yes" if row["ok"] else "NO"
                compiled = f"{row['compile']:<9}  " if args.compile else ""
                print(f"{variant:<18} {version:<26} {located:<8} {row['seconds']:>8.3f}s  {compiled}{row['fetch']}"
                      + ("" if row["ok"] else f"  ({row['error']})"), flush=True)
        finally:
            if server:
                server.close()
    elapsed = time.monotonic() - started
    located = [r for r in rows if r["ok"]]
    fetched = [r for r in rows if r["fetch"] == "ok"]
    ran = [r for r in rows if r["fetch"] not in ("-", "not run") and not r["fetch"].startswith("not run (musl")]
    twins = [r for r in rows if r["fetch"].startswith("not run (musl")]
    twins_ok = [r for r in twins if "same lines as" in r["fetch"]]
    times = sorted(r["seconds"] for r in rows)
    compiled = [r for r in rows if r.get("compile") not in (None, "-", "not run")]
    compiled_ok = [r for r in compiled if r["compile"] == "ok"]
    print(f"\n{len(located)} of {len(rows)} builds located; "
          + (f"{len(compiled_ok)} of {len(compiled)} --compile executables located; " if args.compile else "")
          + (f"{len(fetched)} of {len(ran)} fetches captured; {len(twins_ok)} of {len(twins)} musl builds "
             "found at the same source lines as their glibc twin; " if args.fetch else "")
          + (f"analysis median {times[len(times) // 2]:.3f} s, max {times[-1]:.3f} s; " if times else "")
          + f"{elapsed:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if (len(located) == len(rows) and len(fetched) == len(ran) and len(twins_ok) == len(twins)
                 and len(compiled_ok) == len(compiled)) else 1


if __name__ == "__main__":
    sys.exit(main())
