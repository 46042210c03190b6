"""Finding the files whose TLS functions the ssl collector hooks.

A uprobe belongs to a file (its inode), not to a process: one attachment to
libssl.so.3 covers every process that maps it, now or later. So discovery
gathers files, each once by device and inode, from what running processes
execute and map, the dynamic linker's cache and well-known agent runtimes;
while running, the kernel reports every exec and every opened file named
like a TLS library, and those are added as they come.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from ...errors import AgentsightError
from .libraries import AnalysisFailed, LibraryAnalyzer, TlsLibrary

_TLS_LIBRARY_NAME = re.compile(r"/lib(ssl|gnutls)[^/]*\.so[^/]*$")
# GnuTLS's OpenSSL compatibility layer: its SSL_* call GnuTLS, which is hooked.
_WRAPPERS = re.compile(r"/libgnutls-openssl[^/]*$")
# Runtimes agents run on that carry their own TLS stack; looked for in PATH
# and in the usual per-user install places.
_RUNTIME_NAMES = ("node", "bun", "deno", "claude")
_RUNTIME_GLOBS = (
    "/root/.bun/bin/bun", "/home/*/.bun/bin/bun",
    "/usr/lib/chromium/chromium",  # Debian's chromium; /usr/bin/chromium is a script that starts it
    "/root/.nvm/versions/node/*/bin/node", "/home/*/.nvm/versions/node/*/bin/node",
    "/root/.local/bin/claude", "/home/*/.local/bin/claude",
)


@dataclass
class TlsFile:
    path: str        # /proc/self/fd/N: agentsight holds the file open, so hooking
                     # works after its process exited or in another mount namespace
    shown_path: str  # the path as the process that uses it sees it
    library: TlsLibrary
    pids: set[int] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return self.library.kind


class Discovery:
    """The TLS files found so far; new ones are returned by each call once."""

    def __init__(self, analyzer: LibraryAnalyzer | None = None):
        self.analyzer = analyzer or LibraryAnalyzer()
        self.files: dict[tuple[int, int], TlsFile] = {}
        self.notes: list[str] = []
        # Files with TLS code that could not be located: path, reason, detail.
        self.failures: list[dict] = []
        self._not_tls: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._own_mount_ns = _mount_ns("self")
        # Where TLS libraries live here; looked up in other mount namespaces too.
        self._library_paths: list[str] = []

    def add(self, path: str, shown_path: str | None = None, pid: int | None = None,
            quick: bool = False) -> TlsFile | None:
        """Analyses `path` unless already seen; returns it if it is a new TLS file.

        With `quick`, raises NeedsAnalysis rather than analysing a file not
        known from before."""
        shown_path = shown_path or path
        if _WRAPPERS.search(shown_path):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # the process is gone, or the file with it
        keep = False
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            with self._lock:
                known = self.files.get(key)
                if known is not None:
                    if pid:
                        known.pids.add(pid)
                    return None
                if key in self._not_tls:
                    return None
            held = f"/proc/self/fd/{fd}"
            try:
                library = self.analyzer.analyze(held, shown_path, quick)
            except AnalysisFailed as exc:
                self._failed(shown_path, exc)
                library = None
            except OSError as exc:
                self.notes.append(f"{shown_path}: cannot read it ({exc.strerror})")
                library = None
            with self._lock:
                if library is None:
                    self._not_tls.add(key)
                    return None
                if key in self.files:
                    return None
                found = TlsFile(held, shown_path, library, {pid} if pid else set())
                self.files[key] = found
                keep = True
                return found
        finally:
            if not keep:
                os.close(fd)

    def _failed(self, shown_path: str, exc: AnalysisFailed) -> None:
        self.notes.append(f"{shown_path}: {exc}")
        self.failures.append({"path": shown_path, "reason": str(exc), "detail": exc.detail})

    def close(self) -> None:
        """Lets go of the files held open for hooking."""
        self.analyzer.flush()
        for f in self.files.values():
            if f.path.startswith("/proc/self/fd/"):
                try:
                    os.close(int(f.path.rsplit("/", 1)[1]))
                except OSError:
                    pass
        self.files.clear()

    def initial(self, pid: int | None = None) -> list[TlsFile]:
        """Everything findable now: processes (all, or one), the linker cache,
        runtimes, and TLS executables seen on earlier runs."""
        found = []
        for p in [pid] if pid else _all_pids():
            found += self.scan_process(p)
        known = [p for p in self.analyzer.known_paths() if os.path.isfile(p)]
        self._library_paths = _linker_cache_tls()
        for path in self._library_paths + _runtimes() + known:
            f = self.add(path)
            if f:
                found.append(f)
        return found

    def scan_process(self, pid: int) -> list[TlsFile]:
        found = []
        exe = _readlink(f"/proc/{pid}/exe")
        if exe:
            f = self.add(f"/proc/{pid}/exe", exe, pid)
            if f:
                found.append(f)
        for path in _mapped_tls_libraries(pid):
            # Through the process's root: it may live in another mount namespace.
            f = self.add(f"/proc/{pid}/root{path}", path, pid)
            if f:
                found.append(f)
        return found

    def on_exec(self, pid: int, quick: bool = False) -> list[TlsFile]:
        """The program just started, and, when it lives in another mount
        namespace (a container), the TLS libraries its view has at the usual
        places: hooked now, before it loads them. Hooking a file in use costs
        a kernel grace period (10-20 ms here), longer than a program may take
        from loading libssl to its first TLS call."""
        found = []
        exe = _readlink(f"/proc/{pid}/exe")
        if exe:
            found.append(self.add(f"/proc/{pid}/exe", exe, pid, quick))
        if _mount_ns(pid) not in (None, self._own_mount_ns):
            for path in self._library_paths:
                found.append(self.add(f"/proc/{pid}/root{path}", path, pid, quick))
        return [f for f in found if f is not None]

    def on_open(self, pid: int, path: str, quick: bool = False) -> TlsFile | None:
        if not path.startswith("/"):
            full = f"/proc/{pid}/cwd/{path}"
        else:
            full = f"/proc/{pid}/root{path}"
        return self.add(full, path, pid, quick)

    def binary(self, path: str) -> TlsFile:
        """Exactly this file, which must hold TLS functions."""
        if not os.path.isfile(path):
            raise AgentsightError(f"{path}: no such file", exit_code=2, parameter="binary")
        try:
            library = self.analyzer.analyze(path, os.path.abspath(path))
        except AnalysisFailed as exc:
            self.failures.append({"path": path, "reason": str(exc), "detail": exc.detail})
            raise AgentsightError(f"{path}: {exc}", exit_code=2, parameter="binary") from None
        except OSError as exc:
            raise AgentsightError(f"{path}: cannot read it ({exc.strerror})", exit_code=2,
                                  parameter="binary") from None
        if library is None:
            linked = _linked_tls_libraries(path)
            hint = f"; it loads {', '.join(linked)}, which are hooked when no binary is named" if linked else ""
            raise AgentsightError(f"{path}: no TLS library recognised in it (no OpenSSL, BoringSSL, "
                                  f"GnuTLS, Go crypto/tls or rustls functions){hint}", exit_code=2,
                                  parameter="binary")
        st = os.stat(path)
        found = TlsFile(path, path, library)
        self.files[(st.st_dev, st.st_ino)] = found
        return found


def _linked_tls_libraries(path: str) -> list[str]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection

    from .elf import open_elf

    try:
        with open(path, "rb") as f:
            dynamic = open_elf(f).get_section_by_name(".dynamic")
            needed: list[str] = []
            if isinstance(dynamic, DynamicSection):
                for tag in dynamic.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)  # type: ignore[attr-defined]  # set on DT_NEEDED tags only
    except (OSError, ELFError):
        return []
    return [n for n in needed if re.match(r"lib(ssl|gnutls)\.so", n)]


def _mount_ns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _readlink(path: str) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None  # gone, a kernel thread, or not ours to see
    return None if target.endswith(" (deleted)") else target


def _mapped_tls_libraries(pid: int) -> set[str]:
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].rstrip("\n")
                    if _TLS_LIBRARY_NAME.search(path) and not path.endswith(" (deleted)"):
                        found.add(path)
    except OSError:
        pass
    return found


def _linker_cache_tls() -> list[str]:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = []
    for line in out.splitlines():
        _, _, path = line.partition("=>")
        path = path.strip()
        if path and _TLS_LIBRARY_NAME.search(path):
            paths.append(path)
    return paths


def _runtimes() -> list[str]:
    paths = [shutil.which(name) for name in _RUNTIME_NAMES]
    for pattern in _RUNTIME_GLOBS:
        paths += glob.glob(pattern)
    return [os.path.realpath(p) for p in paths if p and os.path.isfile(p)]
