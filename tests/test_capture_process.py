"""The process collector against real processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bpf


def test_shell_exec_open_and_exit_code(capture):
    run = capture("process")
    sh = subprocess.Popen(["sh", "-c", "ls /; exit 3"], stdout=subprocess.DEVNULL)
    assert sh.wait(30) == 3
    events, stderr = run.stop()

    execs = [e for e in events if e["type"] == "exec" and e["pid"] == sh.pid]
    assert execs and execs[0]["argv"] == ["sh", "-c", "ls /; exit 3"]
    assert execs[0]["filename"].endswith("sh") and execs[0]["ppid"] == os.getpid()
    assert execs[0]["uid"] == os.getuid() and execs[0]["argv_truncated"] is False

    # ls runs as a child of the shell (dash forks for it).
    forks = {e["child_pid"] for e in events if e["type"] == "fork" and e["pid"] == sh.pid}
    ls_execs = [e for e in events if e["type"] == "exec" and e["argv"] == ["ls", "/"]]
    assert ls_execs and ls_execs[0]["pid"] in forks | {sh.pid}
    ls_pid = ls_execs[0]["pid"]
    opens = [e for e in events if e["type"] == "open" and e["pid"] == ls_pid]
    assert any(e["path"] == "/" and e["ret"] >= 0 and e["flags"] & os.O_DIRECTORY for e in opens), opens

    exits = [e for e in events if e["type"] == "exit" and e["pid"] == sh.pid]
    assert len(exits) == 1
    assert exits[0]["exit_code"] == 3 and exits[0]["signal"] is None
    assert 0 < exits[0]["duration_ns"] < 30 * 10**9
    assert "ready: process: exec, exit, fork, open" in stderr


def test_failed_open_reports_errno(capture, tmp_path):
    missing = tmp_path / "does-not-exist"
    run = capture("process")
    cat = subprocess.run(["cat", str(missing)], capture_output=True)
    assert cat.returncode == 1
    events, _ = run.stop()
    opens = [e for e in events if e["type"] == "open" and e["path"] == str(missing)]
    assert opens and opens[0]["ret"] == -2  # -ENOENT


def test_sigkill_is_reported_as_signal_9(capture):
    run = capture("process")
    victim = subprocess.Popen(["sleep", "30"])
    try:
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -9
    finally:
        victim.kill()
    events, _ = run.stop()
    exits = [e for e in events if e["type"] == "exit" and e["pid"] == victim.pid]
    assert len(exits) == 1
    assert exits[0]["signal"] == 9 and exits[0]["exit_code"] is None and exits[0]["core_dumped"] is False


def test_threads_do_not_produce_process_events(capture):
    code = ("import threading; ts = [threading.Thread(target=lambda: None) for _ in range(8)]; "
            "[t.start() for t in ts]; [t.join() for t in ts]")
    run = capture("process", "--no-open")
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert proc.wait(30) == 0
    events, _ = run.stop()
    # Eight threads started and ended: no fork from the process, one exit for it.
    assert not [e for e in events if e["type"] == "fork" and e["pid"] == proc.pid]
    exits = [e for e in events if e["type"] == "exit" and e["pid"] == proc.pid]
    assert len(exits) == 1 and exits[0]["exit_code"] == 0
    assert not [e for e in events if e["type"] == "open"]


def test_long_argv_is_captured_whole(capture):
    args = [f"argument-{i:04d}" for i in range(400)]  # ~5.6 KB, well past 256 bytes
    run = capture("process", "--no-open")
    subprocess.run(["true", *args])
    events, _ = run.stop()
    execs = [e for e in events if e["type"] == "exec" and e["argv"][:1] == ["true"] and len(e["argv"]) > 1]
    assert execs and execs[0]["argv"] == ["true", *args]


def test_file_activity_and_connections_with_resolved_paths(capture, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    script = ("echo hi > a.txt && mv a.txt b.txt && rm b.txt && mkdir d && rmdir d && "
              "(curl -s -m 2 http://127.0.0.1:9/ || true)")
    run = capture("process")
    sh = subprocess.Popen(["sh", "-c", script], cwd=work)
    assert sh.wait(30) == 0
    events, stderr = run.stop()
    tree = {sh.pid}
    for e in events:
        if e["type"] == "fork" and e["pid"] in tree:
            tree.add(e["child_pid"])
    mine = [e for e in events if e["pid"] in tree]
    by_type = {}
    for e in mine:
        by_type.setdefault(e["type"], []).append(e)

    assert all(e["cwd"] == str(work) for e in by_type["exec"])
    writes = [e for e in by_type["open"] if e["path"] == "a.txt"]
    assert writes and writes[0]["resolved"] == str(work / "a.txt") and writes[0]["flags"] & os.O_CREAT
    (rename,) = by_type["rename"]
    assert (rename["resolved"], rename["new_resolved"], rename["ret"]) == (str(work / "a.txt"), str(work / "b.txt"), 0)
    (unlink,) = by_type["unlink"]
    assert unlink["resolved"] == str(work / "b.txt") and unlink["comm"] == "rm"
    (rmdir,) = by_type["rmdir"]
    assert rmdir["resolved"] == str(work / "d")
    (connect,) = [e for e in by_type["connect"] if e["comm"] == "curl"]
    assert (connect["family"], connect["addr"], connect["port"]) == ("ipv4", "127.0.0.1", 9)
    assert "ready: process: exec, exit, fork, open, file, connect" in stderr


def _link_ids() -> set[int]:
    """Ids of the BPF links this process holds open."""
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("link_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def test_detaching_destroys_every_link_and_stops_the_programs(tmp_path):
    from agentsight.bpf.object import detach_all
    from agentsight.bpf.ring import RingReader
    from agentsight.collectors.base import Filters
    from agentsight.collectors.process import ProcessCollector

    target = tmp_path / "f"
    target.write_text("x")
    # Opens the file once per line it reads (this process's own opens are never reported).
    child = subprocess.Popen(["sh", "-c", f"while read x; do read y < {target}; echo done; done"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    before = _link_ids()
    collector = ProcessCollector(Filters(pid=child.pid), 1 << 20, 1 << 16)
    reader = RingReader()

    def opens_seen() -> int:
        child.stdin.write("go\n")
        assert child.stdout.readline() == "done\n"
        return len(reader.poll(0))

    try:
        collector.start()
        obj = collector.objects[0]
        reader.add(obj)
        attached = _link_ids() - before
        assert len(attached) == obj.link_count >= 20  # lifecycle and syscall tracepoints
        assert opens_seen() > 0
        detach_all(collector.objects)
        assert obj.link_count == 0
        assert _link_ids() == before
        assert opens_seen() == 0
    finally:
        reader.close()
        collector.close()
        child.stdin.close()
        child.wait(5)
