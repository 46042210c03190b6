"""Locating crypto/tls in a Go executable, stripped or not.

The functions are found by name in Go's own function table (gopclntab.py),
which every Go executable keeps. The probes then need, per function:

- its entry (the arguments: receiver in rax, buffer in rbx): the
  conditional jump of the prologue's stack check, two or three instructions
  in, before anything touches the argument registers. The kernel emulates
  jumps, where it single-steps the first instruction (a compare): 0.4 us
  per call instead of 12 here;
- every return instruction (the result n in rax), since a uretprobe is not
  safe on a goroutine stack.

Both come from disassembling the function whole, so each offset is a real
instruction boundary. The function must also show that it was compiled for
Go's register ABI: its prologue compares the stack pointer against the
stack bound of the goroutine in r14.
"""
from __future__ import annotations

from dataclasses import dataclass

import capstone

from .gopclntab import GoFunction, Image, NotGo, Pclntab, PclntabError, go_version, mapped_image

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
CLOSE = "crypto/tls.(*Conn).Close"
# Hooked at their returns as well as at their entry.
RETURNING = (WRITE, READ)
_MAX_FUNCTION = 1 << 16
_PROLOGUE_INSNS = 4


class LocateError(Exception):
    """crypto/tls is there but cannot be hooked safely; says why."""


@dataclass
class GoTls:
    functions: dict[str, int]     # function name -> file offset of its entry
    returns: dict[str, list[int]]  # function name -> file offsets of its return instructions
    go_version: str


def locate(path: str) -> GoTls | None:
    """crypto/tls in the Go executable `path`, or None when `path` is not a
    Go program or does not use crypto/tls. Raises LocateError."""
    with mapped_image(path) as image:
        return _locate(image) if image is not None else None


def _locate(image: Image) -> GoTls | None:
    try:
        table = Pclntab(image)
    except NotGo:
        return None
    except PclntabError as exc:
        if _uses_tls(image):
            raise LocateError(str(exc)) from None
        return None
    try:
        found = table.find((WRITE, READ, CLOSE))
    except PclntabError as exc:
        raise LocateError(str(exc)) from None
    if WRITE not in found and READ not in found:
        return None
    missing = [name for name in RETURNING if name not in found]
    if missing:
        raise LocateError(f"{', '.join(missing)} not in its function table")
    version = go_version(image)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    functions, returns = {}, {}
    for name, fn in found.items():
        insns = _disassemble(image, md, fn)
        entry = _stack_check_jump(insns)
        if entry is None:
            shown = f"Go 1.{version[1]}" if version else "this Go release"
            raise LocateError(f"{name} does not use Go's register calling convention ({shown}; Go 1.17 "
                              "or later is needed)")
        functions[name] = _file_offset(image, entry.address)
        if name in RETURNING:
            rets = [_file_offset(image, ins.address) for ins in insns if ins.mnemonic == "ret"]
            if not rets:
                raise LocateError(f"{name} has no return instruction")
            returns[name] = rets
    return GoTls(functions, returns, f"go1.{version[1]}" if version else "unknown")


def _file_offset(image: Image, va: int) -> int:
    off = image.offset(va)
    if off is None:
        raise LocateError(f"{va:#x} is not in the file")
    return off


def _uses_tls(image: Image) -> bool:
    return image.data.find(b"crypto/tls.(*Conn).Read") >= 0


def _disassemble(image: Image, md, fn: GoFunction) -> list:
    """Every instruction of `fn`, decoded from its first byte to its last.
    Go puts no data between instructions, so a decoding that stops early
    means the range is not what the table says."""
    size = fn.end - fn.start
    off = image.offset(fn.start)
    if off is None or size > _MAX_FUNCTION or image.offset(fn.end - 1) is None:
        raise LocateError(f"{fn.name}: its code at {fn.start:#x} is not in the file")
    code = image.data[off:off + size]
    insns = list(md.disasm(code, fn.start))
    decoded = insns[-1].address + insns[-1].size - fn.start if insns else 0
    # Padding after the last instruction is int3, which decodes too.
    if decoded != size:
        raise LocateError(f"{fn.name}: its code does not disassemble cleanly "
                          f"(stopped at +{decoded:#x} of {size:#x} bytes)")
    return insns


def _stack_check_jump(insns):
    """The conditional jump right after the stack check of an ABIInternal
    prologue, which reads g's stack bound through r14: `cmp rsp, [r14 +
    0x10]` (or a scratch register for large frames), then `jbe` to the
    call of morestack. None when the function has no such prologue (Go
    before 1.17 keeps g elsewhere)."""
    for i, ins in enumerate(insns[:_PROLOGUE_INSNS]):
        if ins.mnemonic == "cmp" and "[r14 + 0x10]" in ins.op_str:
            jump = insns[i + 1] if i + 1 < len(insns) else None
            if jump is not None and jump.mnemonic in ("jbe", "jb", "jae", "ja"):
                return jump
            return None
    return None
