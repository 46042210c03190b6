"""Creating the files agentsight writes: private, never through a link.

agentsight runs as root, and what it writes holds prompts and everything an
agent ran. So every file is created 0600, owned by the user who ran sudo,
and opened without following symbolic links; an existing file is only
replaced when the user asks for it.
"""
from __future__ import annotations

import errno
import os
import pwd
import stat

from ..errors import AgentsightError


def invoking_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran sudo, when running as root for them."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid:
        return None
    try:
        if gid is None:
            gid = str(pwd.getpwuid(int(uid)).pw_gid)
        return int(uid), int(gid)
    except (KeyError, ValueError):
        return None


def _refuse(path: str, why: str) -> AgentsightError:
    return AgentsightError(f"{path}: {why}", exit_code=2)


def create_private(path: str, overwrite: bool = False, option: str = "--overwrite") -> int:
    """A new file at `path`, open for writing (its fd): mode 0600, owned by
    the invoking user. An existing file is refused unless `overwrite`; a
    symbolic link always is, except to a terminal, pipe or other character
    device (/dev/stdout, /dev/null), which are written as they are."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return _existing(path, f"exists already; choose another file, or give {option} to replace it")
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link, and overwrite was asked for
            return _existing(path, "is a symbolic link; agentsight does not write through links")
        if exc.errno == errno.EISDIR:
            raise _refuse(path, "is a directory") from None
        raise _refuse(path, f"cannot create it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            os.fchmod(fd, 0o600)  # an existing file replaced keeps no wider mode
            owner = invoking_user()
            if owner is not None:
                os.fchown(fd, *owner)
    except OSError as exc:
        os.close(fd)
        raise _refuse(path, f"cannot set its owner or mode: {exc.strerror}") from None
    return fd


def _existing(path: str, why: str) -> int:
    """Writes to what is at `path` only when it is a device or a pipe."""
    try:
        st = os.stat(path)
    except OSError:
        raise _refuse(path, why) from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        try:
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _refuse(path, f"cannot open it: {exc.strerror}") from None
    raise _refuse(path, why)


def check_new(path: str, overwrite: bool = False, option: str = "--overwrite") -> None:
    """Refuses `path` as a new file the way create_private would, without
    creating it (for files another library creates, such as SQLite's)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link; agentsight does not write through links")
    if not overwrite:
        raise _refuse(path, f"exists already; choose another file, or give {option} to replace it")
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "is not a regular file")
