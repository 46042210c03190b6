"""Rebuilding the BPF objects, and errors a user can act on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from support import REPO


@pytest.mark.bpf
def test_rebuilt_objects_still_load(tmp_path):
    """CI rebuilds csrc/ with clang: the result must load and attach like the committed objects."""
    subprocess.run([sys.executable, str(REPO / "build_bpf.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    code = textwrap.dedent(f"""
        import agentsight.bpf.object as O
        from pathlib import Path
        O._OBJECT_DIRS = (Path({str(tmp_path)!r}),)
        from agentsight.collectors.base import Filters
        from agentsight.collectors.ssl import SslCollector
        from agentsight.collectors.process import ProcessCollector
        ssl = SslCollector(Filters(), 1 << 20, 1 << 16)
        ssl.start()
        print("ssl", sum(o.link_count for o in ssl.objects), len(ssl.hooked), ssl.attach_mode)
        ssl.close()
        proc = ProcessCollector(Filters(), 1 << 20, 1 << 16)
        proc.start()
        print("process", sum(o.link_count for o in proc.objects))
        proc.close()
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
    links, files, mode = lines["ssl"]
    assert mode == "multi" and int(files) >= 2  # libssl and node at least
    # Per file an entry and a return link; then exec, openat enter and exit notices.
    assert int(links) == 2 * int(files) + 3
    from agentsight.collectors.process import LIFECYCLE_PROGRAMS, SYSCALL_PROGRAMS
    every_syscall = sum(len(required) + len(optional) for required, optional in SYSCALL_PROGRAMS.values())
    assert int(lines["process"][0]) == len(LIFECYCLE_PROGRAMS) + every_syscall  # all exist on x86-64


def _agentsight(*args, user: str | None = None):
    cmd = [sys.executable, "-m", "agentsight", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_not_root_is_one_clear_sentence():
    if os.geteuid() != 0:
        result = _agentsight("ssl", "--duration", "1")
    else:
        result = _agentsight("ssl", "--duration", "1", user="65534")
    assert result.returncode == 1
    assert result.stderr.strip() == "agentsight: agentsight needs root to load BPF programs: run it with sudo"
    assert "Traceback" not in result.stderr


@pytest.mark.bpf
def test_missing_binary_is_a_usage_error(tmp_path):
    result = _agentsight("ssl", "--binary", str(tmp_path / "nope"), "--duration", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == f"agentsight: --binary {tmp_path / 'nope'}: no such file"


@pytest.mark.bpf
def test_binary_without_tls_functions_is_a_usage_error():
    result = _agentsight("ssl", "--binary", shutil.which("ls"), "--duration", "1")
    assert result.returncode == 2 and "no TLS library recognised in it" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_options_are_usage_errors():
    result = _agentsight("ssl", "--ring-size", "lots")
    assert result.returncode == 2 and "not a size: 'lots'" in result.stderr
    result = _agentsight("ssl", "--pid", "999999999")
    assert result.returncode == 2 and "no such process" in result.stderr


@pytest.mark.bpf
def test_ring_size_must_be_a_power_of_two():
    result = _agentsight("process", "--ring-size", "3M", "--duration", "1")
    assert result.returncode == 2
    assert "power of two" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_the_commands():
    result = _agentsight("--help")
    assert result.returncode == 0
    for command in ("ssl", "process"):
        assert command in result.stdout
