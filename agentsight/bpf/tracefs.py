"""tracefs, which attaching a syscall tracepoint needs to read its id."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys

TRACEFS = "/sys/kernel/tracing"
_libc = ctypes.CDLL(None, use_errno=True)
_said = False


def _mounted() -> bool:
    return os.path.isdir(os.path.join(TRACEFS, "events")) or os.path.isdir("/sys/kernel/debug/tracing/events")


@contextlib.contextmanager
def tracefs_available():
    """Mounts tracefs for the duration of the block if nobody had, and says so."""
    if _mounted():
        yield
        return
    if _libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs at {TRACEFS}: {os.strerror(err)}")
    global _said
    if not _said:
        print(f"agentsight: mounting tracefs at {TRACEFS} while attaching syscall tracepoints", file=sys.stderr)
        _said = True
    try:
        yield
    finally:
        _libc.umount2(TRACEFS.encode(), 2)  # MNT_DETACH
