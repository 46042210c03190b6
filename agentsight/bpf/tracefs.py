"""tracefs, which attaching a syscall tracepoint needs to read its id.

agentsight attaches its syscall tracepoints from a short-lived thread with a
mount namespace of its own: a private copy of the mounts, where tracefs is
mounted if it was not.  What others mount or unmount meanwhile cannot reach
that copy, and what agentsight mounts there is seen by nobody and goes away
with the thread; the links outlive it (an id is read once, at attach).  So
instances started together never reuse or remove each other's mounts, and
nothing is left to clean up.  Without the right to make a mount namespace
(no CAP_SYS_ADMIN), a tracefs mounted by someone else is used as it is.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import sys
import threading
from typing import Callable, TypeVar

TRACEFS = "/sys/kernel/tracing"
DEBUGFS_TRACING = "/sys/kernel/debug/tracing"  # where libbpf looks first, if it exists
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_said = False
T = TypeVar("T")


def mounted() -> bool:
    """Whether this thread sees tracefs (at its own place, or under debugfs)."""
    return (os.path.isdir(os.path.join(TRACEFS, "events"))
            or os.path.isdir(os.path.join(DEBUGFS_TRACING, "events")))


class _NoNamespace(OSError):
    pass


def with_tracefs(attach: Callable[[], T]) -> T:
    """Runs ``attach`` where tracefs is mounted and stays mounted until it
    returns, and returns what it returns.

    Raises OSError when tracefs is not mounted and cannot be, and whatever
    ``attach`` raises.
    """
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            _private_tracefs()
            outcome.append((True, attach()))
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="agentsight-tracefs")
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]
    if isinstance(value, _NoNamespace):
        if mounted():
            return attach()  # someone else's mount, as it is
        err = value.errno or errno.EPERM
        raise OSError(err, f"tracefs is not mounted at {TRACEFS}, and agentsight cannot mount "
                      f"it ({os.strerror(err)} without CAP_SYS_ADMIN): mount it first "
                      f"(mount -t tracefs nodev {TRACEFS})")
    raise value  # type: ignore[misc]


def _private_tracefs() -> None:
    """Gives the calling thread a private copy of the mounts, with tracefs."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _error(_NoNamespace, "cannot give the attaching thread a mount namespace of its own")
    # Private from the mount that holds /sys/kernel down: an unmount elsewhere
    # no longer reaches our copy of tracefs, and our mount reaches nobody.
    top = _mount_point_of("/sys/kernel")
    if _libc.mount(None, top.encode(), None, MS_REC | MS_PRIVATE, None) != 0:
        raise _error(OSError, f"cannot make the mounts at {top} private to the attaching thread")
    if mounted():
        return
    if _libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise _error(OSError, f"cannot mount tracefs at {TRACEFS}")
    global _said
    if not _said:
        print(f"agentsight: tracefs is not mounted: mounting it at {TRACEFS}, seen only by "
              "agentsight, while attaching syscall tracepoints", file=sys.stderr)
        _said = True


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount_point_of(path: str) -> str:
    """The mount point that holds ``path``: the longest one above or at it."""
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _ESCAPE.sub(lambda m: chr(int(m[1], 8)), line.split(" ", 5)[4])
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best = point
    return best


def _error(kind: type[OSError], what: str) -> OSError:
    err = ctypes.get_errno()
    return kind(err, f"{what}: {os.strerror(err)}")
