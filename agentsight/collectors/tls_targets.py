"""Finding the files whose TLS functions the ssl collector hooks.

A uprobe belongs to a file (its inode), not to a process: one attachment to
libssl.so.3 covers every process that maps it, now or later. So discovery
gathers files, each once, from the libraries mapped by running processes,
the dynamic linker's cache and known executables with OpenSSL built in.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import AgentsightError

# Entry probes; SSL_free only forgets the connection id.
HOOKED_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex", "SSL_do_handshake", "SSL_free")
_DATA_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")

_LIBSSL_NAME = re.compile(r"/libssl\.so[.\d]*$")
# Executables that carry OpenSSL inside them and export its symbols.
_STATIC_CANDIDATES = ("/usr/bin/node", "/usr/local/bin/node")


@dataclass
class TlsTarget:
    path: str  # as this process can open it (through /proc/PID/root when needed)
    kind: str  # "libssl" (shared OpenSSL) or "static-openssl" (linked into an executable)
    functions: dict[str, int] = field(default_factory=dict)  # name -> file offset
    pids: set[int] = field(default_factory=set)  # processes seen mapping it


def symbol_offsets(path: str, names=HOOKED_FUNCTIONS) -> dict[str, int]:
    """File offsets of the named function symbols that `path` defines."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        lookup = _symbol_lookup(elf)
        offsets = {}
        for name in names:
            sym = lookup(name)
            if sym is None or sym["st_shndx"] == "SHN_UNDEF" or sym["st_info"]["type"] != "STT_FUNC":
                continue
            addr = sym["st_value"]
            for seg in loads:
                if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                    offsets[name] = addr - seg["p_vaddr"] + seg["p_offset"]
                    break
        return offsets


def _symbol_lookup(elf: ELFFile):
    # The GNU hash table answers by name without reading all of .dynsym,
    # which for node holds tens of thousands of symbols.
    gnu_hash = elf.get_section_by_name(".gnu.hash")
    if gnu_hash is not None:
        return gnu_hash.get_symbol
    tables = [s for s in (elf.get_section_by_name(".dynsym"), elf.get_section_by_name(".symtab")) if s is not None]

    def lookup(name):
        for table in tables:
            found = table.get_symbol_by_name(name)
            if found:
                return found[0]
        return None

    return lookup


def _mapped_libssl(pid: int | None) -> dict[str, set[int]]:
    """Paths of libssl files mapped by processes (all, or one), openable from here."""
    found: dict[str, set[int]] = {}
    pids = [pid] if pid else [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for p in pids:
        try:
            with open(f"/proc/{p}/maps") as maps:
                for line in maps:
                    parts = line.split(None, 5)
                    if len(parts) < 6:
                        continue
                    path = parts[5].rstrip("\n")
                    if path.endswith(" (deleted)") or not _LIBSSL_NAME.search(path):
                        continue
                    # The process may live in another mount namespace.
                    found.setdefault(f"/proc/{p}/root{path}", set()).add(p)
        except OSError:
            continue  # exited, or a kernel thread
    return found


def _ldconfig_libssl() -> list[str]:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = []
    for line in out.splitlines():
        _, _, path = line.partition("=>")
        path = path.strip()
        if path and _LIBSSL_NAME.search(path):
            paths.append(path)
    return paths


def discover(binary: str | None = None, pid: int | None = None) -> tuple[list[TlsTarget], list[str]]:
    """TLS files to hook, and notes about candidates that were passed over.

    With `binary`, only that file. Otherwise every libssl mapped by a
    process (only `pid`'s when given), libssl from the linker cache, and
    node executables with OpenSSL inside.
    """
    notes: list[str] = []
    if binary:
        if not os.path.isfile(binary):
            raise AgentsightError(f"--binary {binary}: no such file", exit_code=2)
        candidates: dict[str, set[int]] = {binary: set()}
    else:
        candidates = _mapped_libssl(pid)
        # Also what a process may load later (Python imports ssl lazily).
        for path in _ldconfig_libssl():
            candidates.setdefault(path, set())
        for path in list(_STATIC_CANDIDATES) + [shutil.which("node") or ""]:
            if path and os.path.isfile(path):
                candidates.setdefault(os.path.realpath(path), set())

    targets: dict[tuple[int, int], TlsTarget] = {}
    for path, pids in candidates.items():
        try:
            st = os.stat(path)
        except OSError as exc:
            notes.append(f"{path}: {exc.strerror}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in targets:
            targets[key].pids |= pids
            continue
        try:
            functions = symbol_offsets(path)
        except (OSError, ELFError) as exc:
            notes.append(f"{path}: not a readable ELF file ({exc})")
            continue
        if not any(name in functions for name in _DATA_FUNCTIONS):
            notes.append(f"{path}: no SSL_read/SSL_write symbols")
            continue
        kind = "libssl" if _LIBSSL_NAME.search(path) else "static-openssl"
        targets[key] = TlsTarget(path=path, kind=kind, functions=functions, pids=set(pids))
    if binary and not targets:
        raise AgentsightError(f"--binary {binary}: {notes[-1] if notes else 'no TLS functions found'}", exit_code=2)
    return list(targets.values()), notes


def display_path(path: str) -> str:
    """/proc/PID/root/usr/lib/x.so -> /usr/lib/x.so, for messages."""
    m = re.match(r"/proc/\d+/root(/.*)", path)
    return m.group(1) if m else path

