"""Locating SSL_write, SSL_read and SSL_do_handshake in a stripped binary
with BoringSSL linked in (Bun, `bun build --compile` executables).

BoringSSL reports errors with ERR_put_error(lib, 0, reason, file, line),
passing the address of its source file name. The functions of ssl_lib.cc
are told apart by the set of reason codes they report (ERR_LIB_SSL = 16):

    SSL_write           {66, 111, 215, 226}
    internal read       {215, 226}
    SSL_read            {66}, and it calls the internal read routine
    SSL_do_handshake    {134}

So: find the file-name string, every instruction that loads its address,
the function around each (functions are 16-byte aligned and separated by
int3 padding), and the reason code each error call passes in edx.
"""
from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field

import capstone
from elftools.elf.elffile import ELFFile

SSL_LIB_SUFFIX = b"/ssl/ssl_lib.cc\0"
WRITE_REASONS = frozenset({66, 111, 215, 226})
READ_IMPL_REASONS = frozenset({215, 226})
READ_REASONS = frozenset({66})
HANDSHAKE_REASONS = frozenset({134})
MAX_FUNCTION = 16384
# x86-64 `lea r64, [rip + disp32]`: REX.W(+R) 8d modrm(mod=00, rm=101).
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.S)


class NotBoringSSL(Exception):
    """The binary does not contain BoringSSL's ssl_lib.cc (a normal outcome)."""


class AnalysisError(Exception):
    """BoringSSL is there but its functions could not be told apart."""


@dataclass
class Function:
    start: int  # virtual address
    reasons: set[int] = field(default_factory=set)
    calls: set[int] = field(default_factory=set)


@dataclass
class _Image:
    data: mmap.mmap
    loads: list[tuple[int, int, int]]  # (vaddr, offset, filesz)
    text_va: int
    text_off: int
    text_size: int

    def va_to_off(self, va: int) -> int | None:
        for vaddr, offset, size in self.loads:
            if vaddr <= va < vaddr + size:
                return va - vaddr + offset
        return None

    def off_to_va(self, off: int) -> int | None:
        for vaddr, offset, size in self.loads:
            if offset <= off < offset + size:
                return off - offset + vaddr
        return None


def locate(path: str) -> dict[str, int]:
    """File offsets of SSL_write, SSL_read and SSL_do_handshake in `path`."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        if text is None:
            raise NotBoringSSL("no .text section")
        loads = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            image = _Image(data, loads, text["sh_addr"], text["sh_offset"], text["sh_size"])
            functions = _error_reporting_functions(image)
            found = _recognise(functions)
            return {name: image.va_to_off(va) for name, va in found.items()}
        finally:
            data.close()


def _string_address(image: _Image) -> int:
    end = image.data.find(SSL_LIB_SUFFIX)
    if end < 0:
        raise NotBoringSSL("no ssl_lib.cc file name inside")
    start = image.data.rfind(b"\0", 0, end) + 1
    va = image.off_to_va(start)
    if va is None:
        raise NotBoringSSL("ssl_lib.cc name outside any loaded segment")
    return va


def _reference_sites(image: _Image, target: int) -> list[int]:
    """Addresses of instructions that load `target` into a register."""
    sites = []
    lo, hi = image.text_off, image.text_off + image.text_size
    delta = image.text_va - image.text_off
    if target < 1 << 31:
        # Non-PIE: `mov r32, imm32` with the address as its immediate.
        pattern = struct.pack("<I", target)
        i = image.data.find(pattern, lo, hi)
        while i != -1:
            op = image.data[i - 1]
            if 0xB8 <= op <= 0xBF:
                sites.append(i - 1 + delta)
            elif 0xB8 <= image.data[i - 1] <= 0xBF or (image.data[i - 2] == 0x41 and 0xB8 <= op <= 0xBF):
                sites.append(i - 2 + delta)
            i = image.data.find(pattern, i + 1, hi)
    # PIE (and some non-PIE code): rip-relative lea.
    for m in _LEA_RIP.finditer(image.data, lo, hi):
        p = m.start()
        (disp,) = struct.unpack_from("<i", image.data, p + 3)
        if p + delta + 7 + disp == target:
            sites.append(p + delta)
    return sorted(sites)


def _function_start(image: _Image, va: int) -> int | None:
    off = image.va_to_off(va)
    if off is None:
        return None
    p = off - (off - image.text_off) % 16
    floor = max(image.text_off, off - MAX_FUNCTION)
    while p > floor:
        if image.data[p - 1] == 0xCC:
            return p - image.text_off + image.text_va
        p -= 16
    return None


def _error_reporting_functions(image: _Image) -> list[Function]:
    target = _string_address(image)
    sites = _reference_sites(image, target)
    if not sites:
        raise AnalysisError("the ssl_lib.cc name is never referenced from code")
    starts = sorted({s for s in (_function_start(image, site) for site in sites) if s is not None})
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [_scan_function(image, md, start, target) for start in starts]


def _imm(op_str: str) -> int | None:
    try:
        return int(op_str.rsplit(", ", 1)[1], 0)
    except (IndexError, ValueError):
        return None


def _scan_function(image: _Image, md, start: int, file_name: int) -> Function:
    """Reason codes of the error calls in the function at `start`.

    An error call's reason is the value `mov edx, imm` left in edx on the
    way to its call. The block doing `mov ecx, file; call` is often shared
    and reached by jumps (backwards too), so a first pass records the edx
    values each jump carries, and a second follows the code with them.
    """
    off = image.va_to_off(start)
    code = image.data[off:off + MAX_FUNCTION]
    insns = []
    for ins in md.disasm(code, start):
        if ins.mnemonic == "int3":
            break
        insns.append(ins)

    def walk(carried: dict[int, set[int]], fn: Function | None) -> dict[int, set[int]]:
        jumps: dict[int, set[int]] = {}
        edx: set[int] = set()
        loads_file = False
        for ins in insns:
            edx = edx | carried.get(ins.address, set())
            m = ins.mnemonic
            if m == "mov" and ins.op_str.startswith("edx, "):
                value = _imm(ins.op_str)
                edx = {value} if value is not None else set()
            elif (m == "mov" and _imm(ins.op_str) == file_name) or (
                    m == "lea" and "rip" in ins.op_str
                    and ins.address + ins.size + _rip_disp(ins.op_str) == file_name):
                loads_file = True
            elif m == "call":
                target = _imm("x, " + ins.op_str)
                if fn is not None:
                    if target is not None:
                        fn.calls.add(target)
                    if loads_file:
                        fn.reasons |= edx
                loads_file = False
                edx = set()
            elif m.startswith("j"):
                target = _imm("x, " + ins.op_str)
                if target is not None and edx:
                    jumps.setdefault(target, set()).update(edx)
                if m == "jmp":
                    edx, loads_file = set(), False
            elif m == "ret":
                edx, loads_file = set(), False
        return jumps

    fn = Function(start)
    walk(walk({}, None), fn)
    return fn


def _rip_disp(op_str: str) -> int:
    m = re.search(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]", op_str)
    if not m:
        return 1 << 62
    value = int(m.group(2), 0)
    return value if m.group(1) == "+" else -value


def _recognise(functions: list[Function]) -> dict[str, int]:
    def only(predicate, what: str) -> Function:
        matches = [f for f in functions if predicate(f)]
        if len(matches) != 1:
            seen = ", ".join(f"{f.start:#x}:{sorted(f.reasons)}" for f in functions)
            raise AnalysisError(f"expected one {what}, found {len(matches)} (functions and reasons: {seen})")
        return matches[0]

    write = only(lambda f: f.reasons == WRITE_REASONS, "SSL_write")
    read_impl = only(lambda f: f.reasons == READ_IMPL_REASONS, "internal read routine")
    read = only(lambda f: f.reasons == READ_REASONS and read_impl.start in f.calls, "SSL_read")
    handshake = only(lambda f: f.reasons == HANDSHAKE_REASONS, "SSL_do_handshake")
    return {"SSL_write": write.start, "SSL_read": read.start, "SSL_do_handshake": handshake.start}
