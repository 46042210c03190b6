"""Shared pieces of the benchmark suite (bench/run.py): the processes it
starts and stops, tracers under test (agentsight, bpftrace), interleaving and
medians.

Every process started here is registered and ended by its own pid (SIGINT
first, so tracers detach cleanly) when it is stopped or when the run ends.
Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKERS = BENCH / "workers"
PY = sys.executable
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
NODE = shutil.which("node") or "/usr/bin/node"
TRACEFS = "/sys/kernel/tracing"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rotated(items: list, round_no: int) -> list:
    """A B C, B C A, C A B, ...: every condition runs first, in turn."""
    k = round_no % len(items)
    return items[k:] + items[:k]


# --- processes we start -------------------------------------------------------------
_started: list[subprocess.Popen] = []
_lock = threading.Lock()


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    kw.setdefault("cwd", REPO)
    proc = subprocess.Popen(argv, **kw)
    with _lock:
        _started.append(proc)
    return proc


def end(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0) -> int | None:
    """Stop one process we started, by its pid: `sig`, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
    with _lock:
        if proc in _started:
            _started.remove(proc)
    return proc.returncode


def end_all() -> None:
    """Everything still running that this run started (at exit, on errors)."""
    with _lock:
        procs = list(_started)
    for proc in reversed(procs):
        end(proc, timeout=10)


# --- tools -------------------------------------------------------------------------------------
def compile_c(source: Path, out_dir: Path, libs: tuple[str, ...] = ()) -> Path:
    exe = out_dir / source.stem
    cmd = ["gcc", "-O2", "-Wall", "-o", str(exe), str(source), *libs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return exe


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert, key)."""
    from tests.support import make_certificate

    return make_certificate(directory)


def ring_rss_kb(pid: int) -> int | None:
    """RSS of the process's BPF map mappings: the ring buffers, whose data
    area libbpf maps twice (for wrap-around), so each counts double."""
    total, in_map = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    in_map = "anon_inode:bpf-map" in line
                elif in_map and line.startswith("Rss:"):
                    total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total


def foreign_tracers() -> list[str]:
    """agentsight or bpftrace processes this run did not start: their probes
    would slow every condition, the baseline too."""
    with _lock:
        ours = {p.pid for p in _started}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if (b"agentsight" in argv or any(a.endswith(b"bpftrace") for a in argv[:1])
                or (b"-m" in argv and b"agentsight" in argv)):
            found.append(f"{entry}: {text[:120]}")
    return found


NOISE: list[dict] = []   # rounds that ran beside foreign tracers: reported by run.py


def quiet_round(part: str, wait_s: float = 15.0) -> None:
    """Before a round: wait (bounded) for foreign tracers to go; note any left."""
    deadline = time.monotonic() + wait_s
    found = foreign_tracers()
    if found:
        log(f"{part}: waiting up to {wait_s:.0f} s for tracers this run did not start: {found[:2]}")
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = foreign_tracers()
    if found:
        NOISE.append({"part": part, "at": time.strftime("%H:%M:%S"), "tracers": found[:3]})


def note_foreign(part: str) -> None:
    """After a round: foreign tracers that came up while it ran."""
    found = foreign_tracers()
    if found:
        NOISE.append({"part": part, "at": time.strftime("%H:%M:%S"), "tracers": found[:3], "when": "during"})


def timed_rounds(part: str, rounds: int, cfg: dict, quiet_s: float = 20.0):
    """Round numbers 0, 1, ... of a part, as many as its time budget lets start:
    each after foreign tracers had time to go, each noted if one came."""
    deadline = time.monotonic() + cfg["budget_s"]
    for r in range(rounds):
        if r and time.monotonic() > deadline:
            log(f"{part}: time budget reached, fewer rounds")
            return
        quiet_round(part, 5 if cfg["quick"] else quiet_s)
        yield r
        note_foreign(part)
        log(f"{part}: round {r + 1}/{rounds} done")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process (all its threads, those that ended
    too) has used so far, to the nanosecond: its CPU-time clock, whose id
    Linux makes from the pid. /proc/PID/stat, the fallback, counts in 10 ms
    clock ticks."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # the process's CPUCLOCK_SCHED
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class Worker:
    """A long-lived workload process speaking one JSON line per command:
    it prints {"pid": ...} first, then answers each line written to it."""

    def __init__(self, argv: list[str], name: str, timeout: float = 30.0):
        self.name = name
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read(timeout)
        self.pid = hello.get("pid", self.proc.pid)
        self.info = hello

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()})")
                if line.strip().startswith("{"):
                    return json.loads(line)

    def call(self, command: str, timeout: float = 120.0) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        end(self.proc, signal.SIGTERM)


# --- tracefs, for bpftrace ------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def tracefs_mounted() -> bool:
    return os.path.isdir(os.path.join(TRACEFS, "events"))


@contextlib.contextmanager
def tracefs():
    """bpftrace removes its uprobes through tracefs, which is not mounted at
    boot here: mount it for the block if nobody had, unmount it afterwards."""
    if tracefs_mounted():
        yield
        return
    if _libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs: {os.strerror(err)}")
    try:
        yield
    finally:
        _libc.umount2(TRACEFS.encode(), 2)  # MNT_DETACH


# --- tracers under test -----------------------------------------------------------------
_SUMMARY_EVENTS = re.compile(r"stopped after ([\d.]+) s: (\d+) events \(([^)]*)\)")
_FLOOR_TAKEN = re.compile(r"records taken: (\d+)")
_SUMMARY_LOST = re.compile(r"lost in the ring buffer: (\d+) records \((\d+) bytes")


class Agentsight:
    """`python -m agentsight ARGS -o FILE`, from start to its `ready` line,
    stopped with SIGINT; returns what its summary says."""

    def __init__(self, args: list[str], output: Path | str = os.devnull, timeout: float = 60.0):
        self.args = args
        if str(output) != os.devnull:
            Path(output).unlink(missing_ok=True)  # a scratch file of an earlier round
        self.t0 = time.monotonic()
        self.proc = spawn(self.argv(args, output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self.ready_s: float | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.ready_s is None:
            end(self.proc, signal.SIGKILL)
            raise RuntimeError(f"agentsight {' '.join(args)} never became ready: {''.join(self.stderr)[-2000:]}")
        self.cpu_at_ready = cpu_seconds(self.proc.pid)

    @staticmethod
    def argv(args: list[str], output: Path | str) -> list[str]:
        return [PY, "-m", "agentsight", *args, "-o", str(output)]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for line in self.proc.stderr:
            if line.startswith("ready") and self.ready_s is None:
                self.ready_s = time.monotonic() - self.t0
                self._ready.set()
            self.stderr.append(line)
        self._ready.set()

    def stop(self) -> dict:
        hwm, ring = vm_hwm_kb(self.proc.pid), ring_rss_kb(self.proc.pid)
        cpu = cpu_seconds(self.proc.pid)
        t = time.monotonic()
        rc = end(self.proc, signal.SIGINT, timeout=60)
        stop_s = time.monotonic() - t
        deadline = time.monotonic() + 5
        while not any(_SUMMARY_LOST.search(x) for x in self.stderr) and time.monotonic() < deadline:
            time.sleep(0.01)
        text = "".join(self.stderr)
        if rc != 0 or not _SUMMARY_LOST.search(text):
            log(f"agentsight {' '.join(self.args)} exited {rc}: {text[-1500:]}")
        # CPU from ready to stop: what the consumer spent on the workload.
        busy = cpu - self.cpu_at_ready if cpu is not None and self.cpu_at_ready is not None else None
        return {"rc": rc, "ready_s": self.ready_s, "stop_s": stop_s, "vm_hwm_kb": hwm, "ring_rss_kb": ring,
                "cpu_s": busy, **parse_summary(text)}


class FloorProbes(Agentsight):
    """bench/workers/floor_probes.py MODE: probes at agentsight's attach
    points with nothing (`empty`), no consumer (`unread`), the least
    consumer (`drain`: records copied out and dropped), or that consumer
    spending a set CPU time per record (`work:US`) behind them."""

    def __init__(self, mode: str, obj: str | None = None, timeout: float = 60.0):
        super().__init__([mode] + ([obj] if obj else []), timeout=timeout)

    @staticmethod
    def argv(args: list[str], output: Path | str) -> list[str]:
        return [PY, str(WORKERS / "floor_probes.py"), *args]

    def stop(self) -> dict:
        hwm = vm_hwm_kb(self.proc.pid)
        cpu = cpu_seconds(self.proc.pid)
        t = time.monotonic()
        rc = end(self.proc, signal.SIGINT, timeout=60)
        text = "".join(self.stderr)
        if rc != 0:
            log(f"floor_probes {' '.join(self.args)} exited {rc}: {text[-1500:]}")
        taken = _FLOOR_TAKEN.search(text)
        busy = cpu - self.cpu_at_ready if cpu is not None and self.cpu_at_ready is not None else None
        return {"rc": rc, "ready_s": self.ready_s, "stop_s": time.monotonic() - t, "vm_hwm_kb": hwm,
                "cpu_s": busy, "events": int(taken.group(1)) if taken else None}


def parse_summary(text: str) -> dict:
    """What agentsight's summary on stderr says: events (per kind), records lost."""
    m, lost = _SUMMARY_EVENTS.search(text), _SUMMARY_LOST.search(text)
    counts = {}
    if m:
        for part in m.group(3).split(","):
            if part.strip() and part.strip() != "none":
                k, v = part.split()
                counts[k] = int(v)
    return {"events": int(m.group(2)) if m else None, "counts": counts,
            "lost_records": int(lost.group(1)) if lost else None,
            "lost_bytes": int(lost.group(2)) if lost else None}


class Bpftrace:
    """bpftrace running a script, its output read (and counted, not kept) from
    a pipe, where it is line-buffered: BEGIN prints `ready` once every probe
    is attached. Mounts tracefs while it runs (it detaches through it)."""

    def __init__(self, script: str, tmpdir: Path, timeout: float = 60.0):
        self.path = tmpdir / f"bench-{time.monotonic_ns()}.bt"
        self.path.write_text(script)
        self._mount = tracefs()
        self._mount.__enter__()
        self.t0 = time.monotonic()
        self.attaching_s: float | None = None
        self.ready_s: float | None = None
        self.lines = 0
        self.stderr = b""
        try:
            self.proc = spawn(["bpftrace", str(self.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            self._mount.__exit__(None, None, None)
            raise
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self._ready.wait(timeout) or self.ready_s is None:
            self.stop()
            raise RuntimeError(f"bpftrace never became ready: {self.stderr[-2000:]!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            if self.ready_s is None:
                pending += chunk
                if self.attaching_s is None and b"Attaching" in pending:
                    self.attaching_s = time.monotonic() - self.t0
                if b"\nready\n" in pending or pending.startswith(b"ready\n"):
                    self.ready_s = time.monotonic() - self.t0
                    self._ready.set()
                    chunk, pending = pending.split(b"ready\n", 1)[1], b""
                else:
                    continue
            self.lines += chunk.count(b"\n")
        self._ready.set()

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()

    def stop(self) -> dict:
        hwm = vm_hwm_kb(self.proc.pid)
        t = time.monotonic()
        try:
            rc = end(self.proc, signal.SIGINT, timeout=60)
        finally:
            self._mount.__exit__(None, None, None)
            self.path.unlink(missing_ok=True)
        return {"rc": rc, "attaching_s": self.attaching_s, "ready_s": self.ready_s,
                "stop_s": time.monotonic() - t, "vm_hwm_kb": hwm, "lines": self.lines}


class NoTracer:
    pid = None
    ready_s = None

    def stop(self) -> dict:
        return {}


def bpftrace_script(functions: dict[str, list[str]], body: str = "capture") -> str:
    """uprobe + uretprobe on `functions` ({file: [function, ...]}), like
    agentsight's: `capture` prints pid, function and the first 64 bytes the
    call moved when it returns; `empty` has empty bodies; `entry` only the
    uprobe, empty."""
    lines = ['BEGIN { printf("ready\\n"); }']
    for path, fns in functions.items():
        for fn in fns:
            if body == "entry":
                lines.append(f"uprobe:{path}:{fn} {{ }}")
            elif body == "empty":
                lines.append(f"uprobe:{path}:{fn} {{ }}")
                lines.append(f"uretprobe:{path}:{fn} {{ }}")
            elif fn == "SSL_do_handshake":
                lines.append(f"uprobe:{path}:{fn} {{ @h[tid] = arg0; }}")
                lines.append(f'uretprobe:{path}:{fn} /@h[tid]/ {{ printf("%d %s %d\\n", pid, probe, retval); '
                             "delete(@h[tid]); }")
            else:
                # The buffer is the second argument; the bytes are known when it returns.
                lines.append(f"uprobe:{path}:{fn} {{ @b[tid] = arg1; }}")
                lines.append(f"uretprobe:{path}:{fn} /@b[tid]/ {{ "
                             f'if ((int32)retval > 0) {{ printf("%d %s %d %r\\n", pid, probe, (int32)retval, '
                             "buf(@b[tid], 64)); } delete(@b[tid]); }")
    return "\n".join(lines) + "\n"


LIBSSL_FUNCTIONS = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex", "SSL_do_handshake"]
NODE_FUNCTIONS = ["SSL_write", "SSL_read", "SSL_do_handshake"]


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"agentsight-bench-{prefix}-")
