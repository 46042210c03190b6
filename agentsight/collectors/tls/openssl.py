"""Cheaper places to hook OpenSSL's reads and writes.

OpenSSL 3's SSL_write, SSL_read and their _ex variants begin with
`sub rsp, N`, which a uprobe must single-step out of line (~10 µs a call);
each then calls an internal function, ssl_write_internal or
ssl_read_internal, which begins with `push`, an instruction the kernel
emulates (~1 µs). The internal functions take the _ex variants' arguments
(ssl, buf, num, size_t *count) and return 1 on success, so hooking them
captures the same calls, with the real lengths, for a fraction of the cost.
Only done when every exported variant is seen calling the same function.
"""
from __future__ import annotations

from typing import BinaryIO

import capstone

# internal function -> the exported functions that reach it; the _ex one last
ROUTES = {
    "ssl_write_internal": ("SSL_write", "SSL_write_ex"),
    "ssl_read_internal": ("SSL_read", "SSL_read_ex"),
}
_SCAN_INSTRUCTIONS = 24
_EMULATED_FIRST = frozenset({"push"})


def _disasm(f: BinaryIO, md, offset: int, count: int):
    f.seek(offset)
    return list(md.disasm(f.read(count * 15), offset, count))


def _first_call(f: BinaryIO, md, offset: int) -> int | None:
    """File offset of the first function the code at `offset` calls directly.

    Offsets stand in for addresses: a relative call inside one segment
    moves both by the same amount."""
    for ins in _disasm(f, md, offset, _SCAN_INSTRUCTIONS):
        if ins.mnemonic == "call":
            try:
                return int(ins.op_str, 16)
            except ValueError:
                return None  # an indirect call
        if ins.mnemonic in ("ret", "jmp"):
            return None
    return None


def _starts_emulated(f: BinaryIO, md, offset: int) -> bool:
    first = _disasm(f, md, offset, 1)
    return bool(first) and first[0].mnemonic in _EMULATED_FIRST


def reroute(f: BinaryIO, functions: dict[str, int]) -> dict[str, int]:
    """`functions` (name -> file offset) with the exported read and write
    functions replaced by the internal function they all call, where that
    holds and the internal one starts with an emulated instruction."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = dict(functions)
    for internal, exported in ROUTES.items():
        present = [name for name in exported if name in functions]
        if exported[-1] not in present:
            continue
        target = _first_call(f, md, functions[exported[-1]])
        if target is None or not _starts_emulated(f, md, target):
            continue
        if any(_first_call(f, md, functions[name]) != target for name in present):
            continue  # one of them does not go through it: hook them as they are
        for name in present:
            del out[name]
        out[internal] = target
    return out
