"""Fuzzing the analyzers: type-confused bodies of every provider API,
byte-mutated captures of real clients, and decompression bombs, a few
thousand cases in a process of their own so that its peak RSS is theirs.

Fails on any exception the analyzers let out (counted as ``errors.*``), on
an LLM call with content that yields no llm_call (or an ill-formed one, or
one with an ``analysis_error``), and on a peak RSS above PEAK_RSS_MIB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest

from fuzz_cases import record_real_clients
from support import REPO

SEED = 13
CONFUSED = 3000
MUTATED = 2000
# Python and the analyzers take about 30 MiB; one cut decompression bomb
# holds the 64 MiB a response may decode to, twice for a moment.
PEAK_RSS_MIB = 256


@pytest.fixture(scope="module")
def real_captures(tmp_path_factory):
    """What the official SDKs (and httpx, for Gemini) sent and received, once."""
    caps = record_real_clients()
    path = tmp_path_factory.mktemp("fuzz") / "real.json"
    path.write_bytes(orjson.dumps(caps))
    return path


def test_fuzz_the_analyzers(real_captures):
    r = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_cases.py"), str(SEED), str(CONFUSED),
                        str(MUTATED), str(real_captures)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    cases = sum(report["cases"].values())
    print(f"fuzz: {cases} cases in {report['seconds']:.1f} s ({cases / report['seconds']:.0f}/s), "
          f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    assert report["failures"] == [], f"{report['failed_cases']} cases failed"
    assert report["cases"] == {"confused": CONFUSED, "mutated": MUTATED, "bombs": 4}
    assert report["peak_rss_mib"] < PEAK_RSS_MIB, report
    assert report["seconds"] < 60
