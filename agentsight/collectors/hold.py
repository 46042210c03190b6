"""Holding a program that has just started until its TLS code is hooked.

A program whose executable agentsight has not analysed yet would make its
first TLS calls before its probes exist (analysing a 100 MB build takes a
tenth of a second or more). So, when asked to, agentsight seizes such a
program with ptrace at exec, interrupting every thread of it, and lets go
once its probes are attached.

Why ptrace, of what stops a process: a ptrace stop is seen only by the
tracer, so the real parent is told nothing (no SIGCHLD, no stopped job for
waitpid(WUNTRACED) or a shell); and when the tracer dies for any reason the
kernel detaches it and the program runs on. SIGSTOP (from BPF or from user
space) shows the parent a stopped job and leaves the program stopped if
agentsight dies; a frozen cgroup also stays frozen.

Seizing races the program's first TLS call (a Bun build can make it 7 ms
after exec), so it is done by a process of its own (HoldProcess), which
reads the execs of unknown programs from a ring of their own and has nothing
else to do: no interpreter lock shared with threads busy decoding events,
and a real-time scheduling class, so it runs as soon as it is woken, however
busy the machine. The kernel leaves programs already known out of that
ring: they are never touched. ptrace requests only work from the thread
that seized: a Holder belongs to one thread, which calls all of its methods.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass, field

PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACECLONE = 0x08
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: threads too

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_libc.ptrace.restype = ctypes.c_long


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    result = _libc.ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


@dataclass
class _Held:
    pid: int
    since: float
    # Thread id -> the signal it stopped with, delivered again on release (0: none).
    threads: dict[int, int] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)


class Holder:
    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}
        self._releasing: list[_Held] = []  # threads that were not stopped yet when let go
        self.owner = threading.get_native_id()
        self.holds = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []  # how long each program was held

    @property
    def active(self) -> bool:
        return bool(self._held or self._releasing)

    def holding(self, pid: int) -> bool:
        return pid in self._held

    def hold(self, pid: int) -> bool:
        """Stops every thread of `pid` before it runs another instruction of
        its own; False (and it runs on) when that is not possible."""
        if pid in self._held:
            return True
        held = _Held(pid, time.monotonic())
        for _ in range(16):  # until no thread appears that is not held
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                break  # it is gone
            new = [t for t in tids if t not in held.threads]
            if not new:
                break
            for tid in new:
                if not self._seize(held, tid):
                    self._let_go(held)
                    return False
        if not held.threads:
            return False
        self._held[pid] = held
        self.holds += 1
        return True

    def _seize(self, held: _Held, tid: int) -> bool:
        try:
            _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACECLONE)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return True  # the thread ended
            if exc.errno == errno.EPERM and self._traced_by_us(tid):
                held.threads[tid] = 0  # a new thread, attached with its parent
                return True
            self.failures.append(f"cannot hold pid {held.pid} ({exc.strerror}"
                                 + ("; it is traced already)" if exc.errno == errno.EPERM else ")"))
            return False
        held.threads[tid] = 0
        try:
            _ptrace(PTRACE_INTERRUPT, tid)
        except OSError:
            pass  # it ended; its exit is reaped in poll()
        return True

    def _traced_by_us(self, tid: int) -> bool:
        try:
            with open(f"/proc/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        return int(line.split()[1]) == self.owner
        except (OSError, ValueError):
            pass
        return False

    def poll(self) -> None:
        """Takes in what held threads report: stops, new threads, exits.
        Called often while anything is held: a traced program that exits
        is reported to its parent only after its tracer has seen it."""
        for held in list(self._held.values()) + self._releasing:
            for tid in list(held.threads):
                self._reap(held, tid)
        for held in list(self._releasing):
            self._detach_stopped(held)
            if not held.threads:
                self._releasing.remove(held)

    def _reap(self, held: _Held, tid: int) -> None:
        while True:
            try:
                got, status = os.waitpid(tid, os.WNOHANG | WALL)
            except ChildProcessError:
                held.threads.pop(tid, None)  # gone, or no longer ours
                held.stopped.discard(tid)
                return
            if not got:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                held.threads.pop(tid, None)
                held.stopped.discard(tid)
                return
            if not os.WIFSTOPPED(status):
                continue
            event, sig = status >> 16, os.WSTOPSIG(status)
            held.stopped.add(tid)
            if event == PTRACE_EVENT_CLONE:
                message = ctypes.c_ulong()
                try:
                    _ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(message))
                    held.threads.setdefault(message.value, 0)
                except OSError:
                    pass
            elif event == 0:
                held.threads[tid] = sig  # a signal arrived: deliver it when letting go
            # PTRACE_EVENT_STOP: our interrupt (or a group stop, which detaching resumes).

    def overdue(self, seconds: float) -> list[int]:
        """The programs held longer than `seconds`."""
        now = time.monotonic()
        return [pid for pid, held in self._held.items() if now - held.since > seconds]

    def release(self, pid: int) -> float | None:
        """Lets every thread of `pid` run on; how long it was held."""
        held = self._held.pop(pid, None)
        if held is None:
            return None
        seconds = time.monotonic() - held.since
        self.seconds.append(seconds)
        self._let_go(held)
        return seconds

    def _let_go(self, held: _Held) -> None:
        # A thread can only be detached once it is in its stop; one still on
        # its way there is waited for briefly, then again at each poll().
        deadline = time.monotonic() + 0.05
        while True:
            for tid in list(held.threads):
                self._reap(held, tid)
            self._detach_stopped(held)
            if not held.threads or time.monotonic() > deadline:
                break
            time.sleep(0.0005)
        if held.threads and held not in self._releasing:
            self._releasing.append(held)

    def _detach_stopped(self, held: _Held) -> None:
        for tid in list(held.stopped):
            try:
                _ptrace(PTRACE_DETACH, tid, 0, held.threads.get(tid, 0))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    held.stopped.discard(tid)  # it died: poll() reaps it
                continue
            held.threads.pop(tid, None)
            held.stopped.discard(tid)

    def release_all(self) -> None:
        for pid in list(self._held):
            self.release(pid)
        deadline = time.monotonic() + 1.0
        while self._releasing and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.001)


# --- the holding process ---

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
# A program is let go after this long even if its analysis has not finished.
HOLD_LIMIT_SECONDS = 10.0
# A release that came before its exec's hold request is kept this long.
_EARLY_SECONDS = 5.0


def kernel_dev(st_dev: int) -> int:
    """A device number as the kernel keeps it in a superblock (MKDEV)."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


class HoldProcess:
    """The parent's end of the process that holds new programs.

    It is started with the BPF object whose `holds` ring it reads, and is
    told with release() once a program's TLS code is hooked; reports() says
    what it did: ("held", pid, exec_ns, seized_ns, path), ("let go", pid,
    monotonic ns), ("note", text). It dies with agentsight, and the kernel
    then lets every program it holds run on."""

    def __init__(self, obj) -> None:
        commands_r, self._commands = os.pipe()
        self._reports, reports_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the holder: never returns
            code = 0
            try:
                os.close(self._commands)
                os.close(self._reports)
                _serve(obj, parent, commands_r, reports_w)
            except BaseException:  # noqa: BLE001 - whatever happens, only this process ends
                code = 1
            finally:
                os._exit(code)
        os.close(commands_r)
        os.close(reports_w)
        os.set_blocking(self._reports, False)
        self.pid = pid
        self._partial = b""

    def hold(self, pid: int, exec_ns: int) -> None:
        """Hold `pid` too (the kernel did not ask: its program is known, but
        it needs other files analysed)."""
        self._send(b"h %d %d\n" % (pid, exec_ns))

    def _send(self, command: bytes) -> None:
        try:
            os.write(self._commands, command)
        except OSError:
            pass  # the holder is gone: the kernel let its programs go

    def release(self, pid: int, exec_ns: int) -> None:
        """The program `pid` started at `exec_ns` may run: its code is hooked, or
        known to hold no TLS code (sent for every exec, held or not)."""
        self._send(b"r %d %d\n" % (pid, exec_ns))

    def reports(self) -> list[tuple]:
        try:
            data = os.read(self._reports, 1 << 16)
        except (BlockingIOError, OSError):
            data = b""
        return self._parse(data)

    def _parse(self, data: bytes) -> list[tuple]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out: list[tuple] = []
        for line in lines:
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            if kind == "h":
                pid, exec_ns, seized_ns, path = rest.split(" ", 3)
                out.append(("held", int(pid), int(exec_ns), int(seized_ns), path))
            elif kind == "d":
                pid, when = rest.split(" ")
                out.append(("let go", int(pid), int(when)))
            elif kind == "n":
                out.append(("note", rest))
        return out

    def close(self) -> list[tuple]:
        """Lets every held program go, ends the holder; its last reports."""
        try:
            os.write(self._commands, b"q\n")
        except OSError:
            pass
        os.close(self._commands)
        deadline = time.monotonic() + 3
        while not os.waitpid(self.pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)  # the kernel lets its programs go
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.005)
        # It has ended, so its end of the pipe is closed: read to the end.
        os.set_blocking(self._reports, True)
        data = b""
        while chunk := os.read(self._reports, 1 << 16):
            data += chunk
        os.close(self._reports)
        return self._parse(data + b"\n")


def _serve(obj, parent: int, commands: int, reports: int) -> None:
    from ..bpf.ring import RingReader
    from .records import EVENT_TLS_NOTICE, FAST

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return  # agentsight died before the line above
    libc.prctl(_PR_SET_NAME, b"agentsight-hold", 0, 0, 0)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # agentsight tells it when to stop
    try:
        # It sleeps but for a few hundred microseconds per new program; woken,
        # it must get a CPU before the program it is to hold does.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except OSError:
            pass
    os.set_blocking(commands, False)
    # Of agentsight's files only these: a probe's link kept open here would
    # keep it attached after agentsight detached it.
    keep = {0, 1, 2, commands, reports, obj.map_fd("holds")}
    for fd in [int(f) for f in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    ring = RingReader()
    ring.add(obj, "holds")
    decode = FAST[EVENT_TLS_NOTICE].decode
    holder = Holder()
    exec_of: dict[int, int] = {}  # held pid -> the exec it is held for
    early: dict[tuple[int, int], float] = {}  # (pid, exec) let go before its request came
    pending = b""

    def say(line: str) -> None:
        os.write(reports, line.encode("utf-8", "replace") + b"\n")

    def hold(pid: int, exec_ns: int) -> None:
        if early.pop((pid, exec_ns), None) is not None or exec_of.get(pid) == exec_ns:
            return
        if holder.hold(pid):
            exec_of[pid] = exec_ns
            try:
                path = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                path = f"pid {pid}"
            say(f"h {pid} {exec_ns} {time.monotonic_ns()} {path}")

    while True:
        for record in ring.poll(2 if holder.active else 50):
            exec_ns, pid = decode(record)[:2]
            hold(pid, exec_ns)
        for failure in holder.failures:
            say(f"n {failure}: its first TLS calls may be missed")
        holder.failures.clear()
        try:
            data = os.read(commands, 1 << 16)
            closed = not data
        except BlockingIOError:
            data, closed = b"", False
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        now = time.monotonic()
        for line in lines:
            if line == b"q":
                closed = True
                break
            command, pid_text, exec_text = line.split(b" ")
            pid, exec_ns = int(pid_text), int(exec_text)
            if command == b"h":
                hold(pid, exec_ns)
            elif exec_of.get(pid) == exec_ns:
                del exec_of[pid]
                holder.release(pid)
                say(f"d {pid} {time.monotonic_ns()}")
            elif pid not in exec_of:
                early[(pid, exec_ns)] = now
        if closed:
            holder.release_all()
            return
        for pid in holder.overdue(HOLD_LIMIT_SECONDS):
            exec_of.pop(pid, None)
            holder.release(pid)
            say(f"n let pid {pid} go after holding it {HOLD_LIMIT_SECONDS:.0f} s: the analysis of its TLS code has "
                "not finished; its first TLS calls may be missed")
            say(f"d {pid} {time.monotonic_ns()}")
        holder.poll()
        for key in [k for k, t in early.items() if now - t > _EARLY_SECONDS]:
            del early[key]
