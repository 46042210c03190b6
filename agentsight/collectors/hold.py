"""Holding a program that has just started until its TLS code is hooked.

A program whose executable agentsight has not analysed yet would make its
first TLS calls before its probes exist (analysing a 100 MB build takes a
tenth of a second or more). So, when asked to, the thread that reads exec
notices seizes such a program with ptrace and interrupts every thread of
it, and lets go once the probes are attached.

Why ptrace, of what stops a process: a ptrace stop is seen only by the
tracer, so the real parent is told nothing (no SIGCHLD, no stopped job for
waitpid(WUNTRACED) or a shell); and when the tracer dies for any reason the
kernel detaches it and the program runs on. SIGSTOP (from BPF or from user
space) shows the parent a stopped job and leaves the program stopped if
agentsight dies; a frozen cgroup also stays frozen. Programs already known
are never touched.

ptrace requests only work from the thread that seized: a Holder belongs to
one thread, which calls all of its methods.
"""
from __future__ import annotations

import ctypes
import errno
import os
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
