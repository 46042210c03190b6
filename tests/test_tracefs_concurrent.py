"""Two agentsight instances at once, where tracefs is not mounted: each
starts and attaches whatever the other does, and neither mounts or unmounts
anything another program could see.

Each test makes a mount namespace of its own and unmounts tracefs there, so
what it tries does not depend on this machine's mounts (and leaves them
alone); the captures run in that namespace through nsenter.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from support import REPO

pytestmark = pytest.mark.bpf


def tracefs_mounts(ns_pid: int) -> list[str]:
    with open(f"/proc/{ns_pid}/mountinfo") as f:
        return [line for line in f if " - tracefs " in line]


@pytest.fixture
def bare_namespace():
    """The pid of a process in a private mount namespace without tracefs."""
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null;"
         " echo ready; exec sleep 600"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        assert tracefs_mounts(holder.pid) == []
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


class Instance:
    """`python -m agentsight ARGS -o OUT` in the namespace of `ns_pid`."""

    def __init__(self, ns_pid: int, args: list[str], out: Path):
        self.args = args
        self.out = out
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(ns_pid), "-m", f"--wd={REPO}", sys.executable, "-m", "agentsight",
             *args, "-o", str(out)], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready.set()
        self.ended.set()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.is_set() and not self.ended.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.ready.is_set(), f"{self.args[0]} did not start: {''.join(self.lines)}"

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def events(self) -> list[dict]:
        """Once interrupted: what it wrote, after it exited cleanly."""
        try:
            self.proc.wait(30)
        finally:
            self.kill()
        self.ended.wait(5)
        assert self.proc.returncode == 0, "".join(self.lines)
        return [orjson.loads(x) for x in self.out.read_bytes().splitlines() if x.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stop(*instances: Instance) -> list[list[dict]]:
    time.sleep(0.3)  # let the consumers drain what is below their wake-up threshold
    for inst in instances:
        inst.interrupt()
    return [inst.events() for inst in instances]


def opened(events: list[dict], path: str) -> bool:
    return any(e["type"] == "open" and e.get("path") == path for e in events)


def touch_marker(tmp_path: Path) -> str:
    marker = str(tmp_path / f"marker-{uuid.uuid4().hex}")
    with open(marker, "w"):
        pass
    return marker


class MountWatch:
    """Looks at a namespace's mounts as often as it can, for a tracefs."""

    def __init__(self, ns_pid: int):
        self.ns_pid = ns_pid
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.seen:
            self.seen = tracefs_mounts(self.ns_pid)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


PAIRS = [("trace", "process"), ("process", "process"), ("trace", "trace")]


def test_two_captures_started_together_both_attach_and_mount_nothing_the_other_sees(
        bare_namespace, tmp_path):
    rnd = random.Random(8)
    for round_ in range(6):
        kinds = PAIRS[round_ % len(PAIRS)]
        watch = MountWatch(bare_namespace)
        first = Instance(bare_namespace, [kinds[0]], tmp_path / f"r{round_}a.jsonl")
        time.sleep(0 if round_ < 3 else rnd.uniform(0, 0.4))
        second = Instance(bare_namespace, [kinds[1]], tmp_path / f"r{round_}b.jsonl")
        try:
            first.wait_ready()
            second.wait_ready()
            marker = touch_marker(tmp_path)
            got = stop(first, second)
        finally:
            first.kill()
            second.kill()
        seen = watch.stop()
        assert seen == [], f"round {round_}: a tracefs mount appeared where others see it: {seen}"
        for inst, events in zip((first, second), got):
            assert opened(events, marker), f"round {round_}: {inst.args[0]} missed the marker"
    assert tracefs_mounts(bare_namespace) == []


FLAPPER = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
sys.stdout.write("flapping\n"); sys.stdout.flush()
while True:
    libc.mount(b"nodev", b"/sys/kernel/tracing", b"tracefs", 0, None)
    libc.umount2(b"/sys/kernel/tracing", 0)
"""


def test_a_capture_attaches_while_another_program_mounts_and_unmounts_tracefs(
        bare_namespace, tmp_path):
    # What an agentsight that mounts and unmounts tracefs around its own
    # attach does, many times over: each instance must start all the same.
    flapper = subprocess.Popen(["nsenter", "-t", str(bare_namespace), "-m", sys.executable, "-c",
                                FLAPPER], stdout=subprocess.PIPE, text=True)
    try:
        assert flapper.stdout.readline() == "flapping\n"
        for i, kind in enumerate(["process", "trace"]):
            inst = Instance(bare_namespace, [kind], tmp_path / f"f{i}.jsonl")
            try:
                inst.wait_ready()
                marker = touch_marker(tmp_path)
                (events,) = stop(inst)
            finally:
                inst.kill()
            assert opened(events, marker), f"{kind} missed the marker"
    finally:
        flapper.kill()
        flapper.wait()


def test_without_tracefs_and_without_the_right_to_mount_it_the_error_says_what_to_do(
        bare_namespace, tmp_path):
    r = subprocess.run(["nsenter", "-t", str(bare_namespace), "-m", f"--wd={REPO}",
                        "setpriv", "--bounding-set=-sys_admin", sys.executable, "-m", "agentsight",
                        "process", "-o", str(tmp_path / "out.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "agentsight: tracefs is not mounted at /sys/kernel/tracing, and agentsight cannot mount it "
        "(Operation not permitted without CAP_SYS_ADMIN): mount it first "
        "(mount -t tracefs nodev /sys/kernel/tracing); file and network activity need tracefs")
    assert tracefs_mounts(bare_namespace) == []
