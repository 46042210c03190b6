"""`record`: run or attach to an agent and keep everything in a session file."""
from __future__ import annotations

import os
import platform
import pwd
import shutil
import signal
import sys
import time
from dataclasses import dataclass

from . import __version__
from .analyzers import Analysis
from .analyzers.correlate import Correlator
from .collectors.base import Filters
from .collectors.live import LiveCapture, print_losses
from .collectors.process import ProcessCollector
from .collectors.ssl import SslCollector
from .errors import AgentsightError
from .pipeline import Pipeline
from .sinks.base import Sink
from .sinks.session import SessionWriter
from .ui.live import LiveStatus

# After Ctrl-C, how long the recorded command gets to finish (it saw the
# Ctrl-C too) before the recording stops without it.
INTERRUPT_GRACE_SECONDS = 2.0


@dataclass
class RecordOptions:
    output: str
    command: list[str] | None = None
    pid: int | None = None
    comm: str | None = None
    ring_size: int = 8 << 20
    wakeup_bytes: int = 256 << 10
    live: bool = True
    overwrite: bool = False
    hold: bool = True  # hold programs whose TLS code is not hooked yet (see collectors/hold.py)


def invoking_user_kwargs() -> dict:
    """Popen arguments that run a command as the user who ran sudo, in their
    working directory, with their environment (HOME and the like fixed)."""
    uid = os.environ.get("SUDO_UID")
    if os.geteuid() != 0 or not uid:
        return {}
    try:
        user = pwd.getpwuid(int(uid))
    except (KeyError, ValueError):
        return {}
    gid = int(os.environ.get("SUDO_GID", user.pw_gid))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return {"user": user.pw_uid, "group": gid, "extra_groups": os.getgrouplist(user.pw_name, gid), "env": env}


class HeldChild:
    """The recorded command, forked and held until released.

    The fork waits on a pipe, so agentsight can put its pid in the traced
    map first; released, it takes the invoking user's identity and execs
    the command directly: its own exec is the first thing recorded."""

    def __init__(self, argv: list[str], user: dict):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only simple system calls until exec
            try:
                os.close(write_end)
                if not os.read(read_end, 1):
                    os._exit(125)  # agentsight went away before releasing us
                os.close(read_end)
                if user:
                    os.setgroups(user["extra_groups"])
                    os.setgid(user["group"])
                    os.setuid(user["user"])
                os.execvpe(argv[0], argv, user.get("env", os.environ))
            except BaseException as exc:  # noqa: BLE001 - report and leave, whatever happened
                os.write(2, f"agentsight: cannot run {argv[0]}: {exc}\n".encode(errors="replace"))
            finally:
                os._exit(127)
        os.close(read_end)
        self.pid = pid
        self._release = write_end
        self.returncode: int | None = None

    def release(self) -> None:
        os.write(self._release, b"1")
        os.close(self._release)

    def poll(self) -> int | None:
        """Like Popen.poll: the exit code, -signal, or None while running."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def descendants(roots: set[int]) -> set[int]:
    """The given processes and all their current descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def pids_named(comm: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and open(f"/proc/{entry}/comm").read().strip() == comm[:15]:
                found.add(int(entry))
        except OSError:
            continue
    return found


class Recording:
    def __init__(self, opts: RecordOptions, extra_sinks: list[Sink] | None = None):
        self.opts = opts
        self.child: HeldChild | None = None
        self.root_pids: set[int] = set()
        self._interrupted_at: float | None = None
        if opts.command:
            user_kwargs = invoking_user_kwargs()
            path = (user_kwargs.get("env") or os.environ).get("PATH")
            if not shutil.which(opts.command[0], path=path):
                raise AgentsightError(f"{opts.command[0]}: command not found", exit_code=127)
            self._user_kwargs = user_kwargs
        what = {"command": opts.command} if opts.command else {"pid": opts.pid, "comm": opts.comm}
        self.session = SessionWriter(opts.output, {"agentsight": __version__, "host": platform.node(), **what},
                                     overwrite=opts.overwrite)
        self.live = LiveStatus(sys.stderr) if opts.live else None
        self.extra_sinks = list(extra_sinks or [])

    def run(self) -> int:
        opts = self.opts
        filters = Filters(follow=True, comm=opts.comm)
        process = ProcessCollector(filters, opts.ring_size, opts.wakeup_bytes)
        ssl = self.ssl = SslCollector(filters, opts.ring_size, opts.wakeup_bytes, hold=opts.hold,
                                      shared_maps=lambda: {"traced": process.traced_map_fd(),
                                                           "events": process.objects[0].map_fd("events")})
        self.process = process
        self.correlator = Correlator(roots=set())
        self.capture = LiveCapture([process, ssl])
        sinks: list[Sink] = [self.session, *self.extra_sinks]
        if self.live is not None:
            sinks.append(self.live)
        self.pipeline = Pipeline(self.capture, sinks, analysis=Analysis(), correlator=self.correlator,
                                 describe_end=self._end_meta)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # the TLS notice thread gets the interpreter quickly
        outcome = None
        try:
            outcome = self.pipeline.run(ready=self._start, should_stop=self._should_stop)
        finally:
            sys.setswitchinterval(interval)
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.live is not None:
                self.live.restore()
            if outcome is None:  # the session must still say it ended
                try:
                    self.session.close(status="stopped: agentsight failed", **self._end_meta())
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
        print_losses(outcome.seconds, outcome.counts, outcome.losses)
        for note in self.capture.notes():
            print(f"agentsight: note: {note}", file=sys.stderr)
        print(f"agentsight: session written to {opts.output}; see it with: agentsight report {opts.output}",
              file=sys.stderr)
        return self._exit_status()

    # --- starting and stopping ---

    def _start(self, description: str) -> None:
        print(f"ready: {description}", file=sys.stderr, flush=True)
        if self.opts.command:
            self.child = HeldChild(self.opts.command, self._user_kwargs)
            self.root_pids = {self.child.pid}
            self.process.trace_pids(self.root_pids)
            if self.opts.hold:
                # The command's own program is analysed and hooked before it
                # starts; the programs it starts are held (collectors/hold.py).
                env = self._user_kwargs.get("env") or os.environ
                path = shutil.which(self.opts.command[0], path=env.get("PATH"))
                if path:
                    self.ssl.prepare(path)
            self.child.release()
        else:
            roots = {self.opts.pid} if self.opts.pid else pids_named(self.opts.comm or "")
            self.root_pids = descendants(roots)
            self.process.trace_pids(self.root_pids)
        self.correlator.set_roots(self.root_pids)
        self.session.set_meta(root_pids=sorted(self.root_pids))
        if self.live is not None:
            self.live.start(self._lost_records)

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.child is not None and self.child.poll() is None:
            # The command got the Ctrl-C as well; give it a moment to finish.
            self._interrupted_at = time.monotonic()
            self.pipeline.stop_reason = "interrupted (SIGINT)"
            return
        self.pipeline.stop(signal.Signals(signum).name)

    def _should_stop(self) -> bool:
        if self.child is not None:
            if self.child.poll() is not None:
                return True
            return bool(self._interrupted_at and time.monotonic() - self._interrupted_at > INTERRUPT_GRACE_SECONDS)
        return bool(self.opts.pid and not os.path.exists(f"/proc/{self.opts.pid}"))

    def capture_losses(self) -> dict[str, int]:
        """What the capture has lost so far, by cause (nothing before it starts)."""
        capture = getattr(self, "capture", None)
        return capture.losses() if capture is not None else {}

    def _lost_records(self) -> int:
        losses = self.capture.losses()
        return losses["ring_full_records"] + losses["bad_records"]

    def _end_meta(self) -> dict:
        meta: dict = {"root_pids": sorted(self.root_pids)}
        if self.child is not None:
            code = self.child.poll()
            meta["command_exit"] = code if code is None or code >= 0 else f"signal {-code}"
            meta["command_running_at_end"] = code is None
        return meta

    def _exit_status(self) -> int:
        if self.child is None:
            return 0
        code = self.child.poll()
        if code is None:
            return 130 if self._interrupted_at else 1
        return code if code >= 0 else 128 - code
