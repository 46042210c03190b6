"""Reading x86-64 machine code that has no symbols.

Three questions, answered fast on a 100 MB executable: which instructions
load a given address (the code that names a string), which direct calls
lead into given ranges (where functions start, and who calls them), and
what one function does with constants: the values each register may hold
at each call, followed through the function's control flow rather than read
off one compiler's instruction sequence.

Only the functions asked about are disassembled; finding references and
calls scans bytes with regular expressions, one pattern per megabyte of
code, since a direct reference's displacement is fixed by its position.
"""
from __future__ import annotations

import bisect
import mmap
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

_CHUNK = 1 << 18
_SCAN_PIECE = 8 << 20  # a data segment is searched this much at a time

# Register families: every name of a general-purpose register -> (index, width).
_FAMILY: dict[str, tuple[int, int]] = {}
for _i, _names in enumerate([
    ("rax", "eax", "ax", "al"), ("rcx", "ecx", "cx", "cl"), ("rdx", "edx", "dx", "dl"),
    ("rbx", "ebx", "bx", "bl"), ("rsp", "esp", "sp", "spl"), ("rbp", "ebp", "bp", "bpl"),
    ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"),
] + [(f"r{n}", f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)]):
    for _width, _name in zip((64, 32, 16, 8), _names):
        _FAMILY[_name] = (_i, _width)
for _name, _i in (("ah", 0), ("ch", 1), ("dh", 2), ("bh", 3)):
    _FAMILY[_name] = (_i, 8)

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
ARGUMENT_REGISTERS = (RDI, RSI, RDX, RCX, 8, 9)  # System V order
_CALL_CLOBBERED = (RAX, RCX, RDX, RSI, RDI, 8, 9, 10, 11)
_STACK = (RSP, RBP)
_REGISTER = re.compile(r"\b(?:r(?:[abcd]x|[sd]i|[sb]p|[89]|1[0-5])[dwb]?|e(?:[abcd]x|[sd]i|[sb]p)|[abcd][lhx]|[sd]il|[sb]pl|[sd]i|[sb]p)\b")
_IMMEDIATE = re.compile(r"-?(?:0x[0-9a-f]+|\d+)$")
_RIP = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
_MASK = {64: (1 << 64) - 1, 32: 0xFFFFFFFF}
# Instructions that write their first operand without reading it.
_WRITE_ONLY = frozenset("mov movabs movzx movsx movsxd lea pop".split())
_NO_WRITE = frozenset("cmp test push nop bt ucomiss ucomisd comiss comisd ptest vptest prefetcht0 "
                      "prefetcht1 prefetcht2 prefetchnta endbr64 pause lfence mfence sfence".split())
_STOPS = frozenset(("ret", "int3", "ud2", "hlt"))
MAX_VALUES = 8  # beyond this many possible constants, a register is unknown


class CodeError(Exception):
    """The file is not a 64-bit x86 ELF executable this module can read."""


@dataclass(frozen=True)
class Input:
    """The value a register held when the function was entered."""
    register: int


class Image:
    """An ELF file mapped read-only, with its loadable segments."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "rb")
        try:
            try:
                elf = ELFFile(self._file)
            except ELFError as exc:
                raise CodeError(f"not an ELF file ({exc})") from None
            if elf["e_machine"] != "EM_X86_64":
                raise CodeError(f"built for {elf['e_machine']}, not x86-64")
            segments = [(s["p_vaddr"], s["p_offset"], s["p_filesz"], bool(s["p_flags"] & 1))
                        for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            self.fixed_address = elf["e_type"] == "ET_EXEC"
            self.data = mmap.mmap(self._file.fileno(), 0, prot=mmap.PROT_READ)
        except BaseException:
            self._file.close()
            raise
        self.segments = sorted(segments)
        self.code = [(va, off, size) for va, off, size, x in self.segments if x and size]
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._decoded: dict[int, _Instruction | None] = {}

    def close(self) -> None:
        self.data.close()
        self._file.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def release(self, start: int, end: int) -> None:
        """Scanned file offsets [start, end): their pages leave this
        process's memory (they stay in the page cache, and fault back in if
        read again), so scanning a 300 MB executable never holds 300 MB."""
        page = mmap.PAGESIZE
        a = start - start % page
        b = min(end - end % page, len(self.data))
        if b > a:
            self.data.madvise(mmap.MADV_DONTNEED, a, b - a)

    def offset(self, va: int) -> int | None:
        for vaddr, off, size, _ in self.segments:
            if vaddr <= va < vaddr + size:
                return va - vaddr + off
        return None

    def is_code(self, va: int) -> bool:
        return any(v <= va < v + size for v, _, size in self.code)

    def strings_ending(self, suffix: bytes) -> list[int]:
        """Addresses of the NUL-terminated strings in data segments that end
        with `suffix` (which includes the NUL)."""
        found = []
        pattern = re.compile(re.escape(suffix))
        for vaddr, off, size, executable in self.segments:
            if executable:
                continue
            end = off + size
            p = off
            while p < end:  # in pieces, each released once searched
                stop = min(p + _SCAN_PIECE, end)
                for m in pattern.finditer(self.data, p, min(stop + len(suffix), end)):
                    if m.start() >= stop:
                        break
                    start = max(self.data.rfind(b"\0", off, m.start()) + 1, off)
                    found.append(vaddr + start - off)
                self.release(p, stop)
                p = stop
        return found

    # --- decoding ---

    def instruction(self, va: int) -> _Instruction | None:
        """The instruction starting at `va` (cached), or None if none decodes there."""
        try:
            return self._decoded[va]
        except KeyError:
            pass
        off = self.offset(va)
        ins = None
        if off is not None and self.is_code(va):
            # Decoding a run at once is much cheaper than one call per instruction.
            for address, size, mnemonic, op_str in self._md.disasm_lite(self.data[off:off + 256], va):
                decoded = _Instruction.parse(address, size, mnemonic, op_str)
                self._decoded.setdefault(address, decoded)
                if address == va:
                    ins = decoded
                if decoded.kind in ("jmp", "stop"):
                    break
        self._decoded[va] = ins
        return ins


@dataclass(slots=True)
class _Instruction:
    address: int
    size: int
    mnemonic: str
    kind: str              # "call", "jmp", "jcc", "stop", "op"
    target: int | None     # direct branch target
    effect: tuple          # what it does to registers (see _apply)
    reads: tuple[int, ...]  # register families whose values it uses
    stores: bool           # writes memory other than the stack
    store_base: int | None = None  # the register its written address is based on

    @staticmethod
    def parse(address: int, size: int, m: str, ops: str) -> _Instruction:
        nxt = address + size
        if m == "call" or m[0] == "j":
            target = int(ops, 16) if ops.startswith("0x") else None
            kind = "call" if m == "call" else "jmp" if m == "jmp" else "jcc"
            reads = tuple({_FAMILY[r][0] for r in _REGISTER.findall(ops)}) if target is None else ()
            return _Instruction(address, size, m, kind, target, (), reads, False)
        if m in _STOPS:
            return _Instruction(address, size, m, "stop", None, (), (RAX,) if m == "ret" else (), False)
        dst, _, src = ops.partition(", ")
        family = _FAMILY.get(dst)
        effect = _effect(m, dst, src, family, nxt)
        if family is not None and (m in _WRITE_ONLY or (m in ("xor", "sub") and dst == src)):
            read_text = src
        else:
            read_text = ops
        reads = tuple({_FAMILY[r][0] for r in _REGISTER.findall(read_text)}) if read_text else ()
        stores, store_base = False, None
        if "[" in dst and m not in _NO_WRITE:
            base = _REGISTER.findall(dst.partition("[")[2])
            store_base = _FAMILY[base[0]][0] if base else None
            stores = store_base not in _STACK
        return _Instruction(address, size, m, "op", None, effect, reads, stores, store_base)


def _effect(m: str, dst: str, src: str, family, nxt: int) -> tuple:
    """A register effect: ("set", reg, values) | ("copy", reg, from, mask) |
    ("join", reg, from) | ("kill", regs...) | ()."""
    if m in _NO_WRITE:
        return ()
    if m in ("cdq", "cqo", "cwd", "cwde", "cdqe"):
        return ("kill", RAX, RDX)
    if m in ("mul", "div", "idiv") or (m == "imul" and not src):
        return ("kill", RAX, RDX)
    if m.startswith(("rep", "movs", "stos", "lods", "scas", "cmps")) and family is None:
        return ("kill", RCX, RSI, RDI, RAX)
    if m in ("syscall",):
        return ("kill", RAX, RCX, 11)
    if m in ("cpuid", "rdtsc", "rdtscp", "xgetbv", "rdpid"):
        return ("kill", RAX, RBX, RCX, RDX)
    if m in ("xchg", "xadd", "cmpxchg"):
        regs = {_FAMILY[r][0] for r in (dst, src) if r in _FAMILY} | ({RAX} if m == "cmpxchg" else set())
        return ("kill", *sorted(regs))
    if family is None:
        return ()
    reg, width = family
    if width < 32:
        return ("kill", reg)
    mask = _MASK[width]
    if m in ("mov", "movabs"):
        if _IMMEDIATE.match(src):
            return ("set", reg, frozenset({int(src, 0) & mask}))
        source = _FAMILY.get(src)
        if source is not None and source[1] >= 32:
            return ("copy", reg, source[0], mask)
        return ("kill", reg)
    if m == "lea":
        rip = _RIP.fullmatch(src.rpartition(" ptr ")[2] if " ptr " in src else src)
        if rip:
            disp = int(rip.group(2), 0)
            return ("set", reg, frozenset({(nxt + (disp if rip.group(1) == "+" else -disp)) & mask}))
        return ("kill", reg)
    if m in ("xor", "sub") and dst == src:
        return ("set", reg, frozenset({0}))
    if m.startswith("cmov"):
        source = _FAMILY.get(src)
        if source is not None and source[1] >= 32:
            return ("join", reg, source[0])
    return ("kill", reg)


Values = frozenset | None  # None: unknown


def _join(a: Values, b: Values) -> Values:
    if a is None or b is None:
        return None
    if a is b or a == b:
        return a
    union = a | b
    return None if len(union) > MAX_VALUES else union


@dataclass
class Call:
    site: int
    target: int | None               # None: an indirect call
    arguments: list[Values]          # value sets of rdi, rsi, rdx, rcx, r8, r9


@dataclass
class Function:
    entry: int
    calls: dict[int, Call] = field(default_factory=dict)
    instructions: set[int] = field(default_factory=set)
    end: int = 0                      # one past the highest instruction reached
    tail_calls: set[int] = field(default_factory=set)
    indirect_jumps: int = 0
    returns: bool = False
    stores: int = 0                   # instructions writing non-stack memory
    # Where a function fills the buffer it was given as second argument (as
    # SSL_read and SSL_peek do): stores of other memory on a path after it
    # wrote through that pointer or passed it to a call as the first
    # argument ("filled"), and after each call it passed the pointer to at all
    # (by the call's address).
    stores_after: dict = field(default_factory=dict)
    inputs_used: set[int] = field(default_factory=set)  # argument registers read before written
    # (callee, argument position, register): an argument passed on unchanged to a direct call.
    passed_on: set[tuple[int, int, int]] = field(default_factory=set)
    complete: bool = True             # every path decoded

    @property
    def indirect_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.target is None)

    def direct_callees(self) -> set[int]:
        return {c.target for c in self.calls.values() if c.target is not None}


def explore(image: Image, entry: int, is_entry: Callable[[int], bool] = lambda va: False,
            follows_call: Callable[[int], bool] = lambda va: False, limit: int = 1 << 16,
            max_steps: int = 60000) -> Function:
    """Follows the function at `entry` through its control flow, tracking
    the constants each register may hold (a set of values per register,
    joined where paths meet) and which argument registers it reads.

    A jump to another function's entry (`is_entry`) is a tail call; so is a
    jump beyond `limit` bytes or backwards past the entry. Code reached by
    falling through a call is not followed when `follows_call` says a
    function starts there (the call did not return)."""
    fn = Function(entry, end=entry)
    lo, hi = entry, entry + limit
    # Sixteen registers, then what was done with the buffer argument so far.
    start_state = tuple(frozenset({Input(r)}) if r in ARGUMENT_REGISTERS else None for r in range(16)) + (_NOTHING,)
    states: dict[int, tuple] = {}
    work: list[tuple[int, tuple]] = [(entry, start_state)]
    steps = 0
    while work:
        va, regs = work.pop()
        while True:
            old = states.get(va)
            if old is not None:
                joined = tuple(_join(a, b) for a, b in zip(old[:16], regs[:16])) + (old[16] | regs[16],)
                if joined == old:
                    break
                regs = joined
            states[va] = regs
            steps += 1
            if steps > max_steps:
                fn.complete = False
                return fn
            ins = image.instruction(va)
            if ins is None:
                fn.complete = False
                break
            fn.instructions.add(va)
            nxt = va + ins.size
            if nxt > fn.end:
                fn.end = nxt
            for r in ins.reads:
                values = regs[r]
                if values:
                    for v in values:
                        if type(v) is Input:
                            fn.inputs_used.add(v.register)
            kind = ins.kind
            if kind == "op":
                if ins.effect:
                    regs = _apply(regs, ins.effect)
                if ins.stores:
                    fn.stores += 1
                    into_buffer = (ins.store_base is not None and regs[ins.store_base] is not None
                                   and _BUFFER in regs[ins.store_base])
                    if into_buffer:
                        regs = regs[:16] + (regs[16] | _FILLED_NOW,)
                    else:
                        for event in regs[16]:
                            fn.stores_after[event] = fn.stores_after.get(event, 0) + 1
            elif kind == "call":
                arguments = [regs[r] for r in ARGUMENT_REGISTERS]
                previous = fn.calls.get(va)
                if previous is not None:
                    arguments = [_join(a, b) for a, b in zip(previous.arguments, arguments)]
                fn.calls[va] = Call(va, ins.target, arguments)
                if ins.target is not None:
                    for i, values in enumerate(arguments):
                        for v in values or ():
                            if type(v) is Input:
                                fn.passed_on.add((ins.target, i, v.register))
                after = list(regs)
                if any(a and _BUFFER in a for a in arguments):
                    after[16] = regs[16] | frozenset({va}) | (_FILLED_NOW if arguments[0] and _BUFFER in arguments[0]
                                                              else _NOTHING)
                for r in _CALL_CLOBBERED:
                    after[r] = None
                regs = tuple(after)
                va = nxt
                if follows_call(va):
                    break
                continue
            elif kind == "jcc":
                t = ins.target
                if t is not None and lo <= t < hi and (t == entry or not is_entry(t)):
                    work.append((t, regs))
                elif t is not None:
                    fn.tail_calls.add(t)
            elif kind == "jmp":
                t = ins.target
                if t is None:
                    fn.indirect_jumps += 1
                    break
                if lo <= t < hi and (t == entry or not is_entry(t)):
                    va = t
                    continue
                fn.tail_calls.add(t)
                break
            else:  # ret, int3, ud2, hlt
                if ins.mnemonic == "ret":
                    fn.returns = True
                break
            va = nxt
            if va != entry and is_entry(va):
                break  # fell into the next function
    return fn


_BUFFER = Input(RSI)
FILLED = "filled"
_NOTHING: frozenset = frozenset()
_FILLED_NOW = frozenset({FILLED})


def _apply(state: tuple, effect: tuple) -> tuple:
    op = effect[0]
    regs = list(state)
    if op == "set":
        regs[effect[1]] = effect[2]
    elif op == "copy":
        values = regs[effect[2]]
        mask = effect[3]
        if values is None:
            regs[effect[1]] = None
        elif mask == _MASK[64]:
            regs[effect[1]] = values
        else:
            # A 32-bit copy of an argument keeps its identity: the low half is what is passed.
            regs[effect[1]] = frozenset(v if type(v) is Input else v & mask for v in values)
    elif op == "join":
        regs[effect[1]] = _join(regs[effect[1]], regs[effect[2]])
    else:  # kill
        for r in effect[1:]:
            regs[r] = None
    return tuple(regs)


def constants(values: Values) -> set[int] | None:
    """The integer constants of a value set; None when unknown or not constant."""
    if values is None:
        return None
    found = {v for v in values if type(v) is int}
    return found if len(found) == len(values) else None


# --- scanning bytes ---

def _high_halves(lo: int, hi: int) -> set[int]:
    """The top 16 bits of every 32-bit value in [lo, hi]."""
    return {r & 0xFFFF for r in range(lo >> 16, (hi >> 16) + 1)}


def _pattern_for(halves: Iterable[int]) -> bytes:
    """A regex alternative matching two little-endian bytes whose value is in `halves`."""
    by_high: dict[int, list[int]] = {}
    for h in halves:
        by_high.setdefault(h >> 8, []).append(h & 0xFF)
    parts = []
    for high, lows in sorted(by_high.items()):
        lows.sort()
        runs: list[list[int]] = []
        for x in lows:
            if runs and x == runs[-1][1] + 1:
                runs[-1][1] = x
            else:
                runs.append([x, x])
        cls = b"".join(re.escape(bytes([a])) + (b"-" + re.escape(bytes([b])) if b != a else b"") for a, b in runs)
        parts.append(b"[" + cls + b"]" + re.escape(bytes([high])))
    return b"(?:" + b"|".join(parts) + b")"


def references(image: Image, target: int) -> list[int]:
    """Addresses of the instructions that load the address `target` into a
    register: `mov reg, imm32` in code linked at a fixed address below
    4 GiB, `lea reg, [rip + disp]` in position-independent code."""
    data = image.data
    sites = set()
    if image.fixed_address and target < 1 << 31:
        needle = re.compile(re.escape(struct.pack("<I", target)))
        for va, off, size in image.code:
            end = off + size
            p = off + 1
            while p < end:  # in pieces, each released once searched
                stop = min(p + _SCAN_PIECE, end)
                for m in needle.finditer(data, p, min(stop + 4, end)):
                    i = m.start()
                    if i >= stop:
                        break
                    op = data[i - 1]
                    if 0xB8 <= op <= 0xBF:  # mov r32, imm32 (41 prefix: r8d-r15d)
                        sites.add(va - off + i - 1 - (data[i - 2] == 0x41))
                    elif (i - 3 >= off and data[i - 2] == 0xC7 and 0xC0 <= op <= 0xC7
                          and data[i - 3] in (0x48, 0x49)):  # mov r64, simm32
                        sites.add(va - off + i - 3)
                image.release(p - 3, stop)
                p = stop
        # Code compiled for a fixed address loads addresses as immediates;
        # only code compiled position-independent would use the other form.
        if len(sites) >= 3:
            return sorted(sites)
    for va, off, size in image.code:
        end = off + size
        delta = va - off
        # lea r64, [rip + disp32]: REX.W 8d modrm(00 reg 101) disp32; disp
        # counts from the end of the instruction, 4 bytes past the disp.
        p = off
        while p < end:
            stop = min(p + _CHUNK, end)
            dmax = target - (p + 6 + delta)
            dmin = target - (stop - 1 + 6 + delta)
            pattern = re.compile(b"\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d].." + _pattern_for(_high_halves(dmin, dmax)),
                                 re.S)
            for m in pattern.finditer(data, p, stop + 6):
                q = m.start()
                if q >= stop:
                    break
                (disp,) = struct.unpack_from("<i", data, q + 2)
                if q + 6 + delta + disp == target and q > off and data[q - 1] & 0xF8 == 0x48:
                    sites.add(q - 1 + delta)
            image.release(p, stop)
            p = stop
    return sorted(sites)


def branches_into(image: Image, windows: Iterable[tuple[int, int]], opcodes: bytes = b"\xe8") -> list[tuple[int, int]]:
    """(site, target) of every direct rel32 call (or `opcodes`: e9 for
    jumps) in the code whose target lies in one of the [start, end) windows.
    Bytes that only look like a call are among them, rarely: callers should
    not trust a target reached by one such site alone."""
    windows = sorted(windows)
    if not windows:
        return []
    starts = [a for a, _ in windows]
    ends: list[int] = []
    for a, b in windows:  # running maximum, for overlapping windows
        ends.append(max(b, ends[-1]) if ends else b)
    spans: list[list[int]] = []
    for a, b in windows:
        if spans and a <= spans[-1][1] + _CHUNK:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    data = image.data
    found = []
    for va, off, size in image.code:
        end = off + size
        delta = va - off
        p = off
        while p < end:
            stop = min(p + _CHUNK, end)
            halves: set[int] = set()
            for a, b in spans:
                halves |= _high_halves(a - (stop - 1 + 5 + delta), (b - 1) - (p + 5 + delta))
            tail = b".." + _pattern_for(halves)
            for opcode in opcodes:
                pattern = re.compile(re.escape(bytes([opcode])) + tail, re.S)
                for m in pattern.finditer(data, p, stop + 4):
                    q = m.start()
                    if q >= stop:
                        break
                    (rel,) = struct.unpack_from("<i", data, q + 1)
                    t = q + 5 + delta + rel
                    i = bisect.bisect_right(starts, t) - 1
                    if i >= 0 and t < ends[i]:
                        found.append((q + delta, t))
            image.release(p, stop)
            p = stop
    return found


def decodes_at(image: Image, va: int, lookback: int = 48, starts: int = 12) -> bool:
    """Whether `va` is where an instruction starts, as linear decoding from
    several earlier points agrees: x86 decoding falls back into step with
    the real instruction stream within a few instructions, so bytes that
    are really the inside of an instruction are passed over."""
    off = image.offset(va)
    if off is None or not image.is_code(va):
        return False
    landed = 0
    for back in range(lookback, lookback - 2 * starts, -2):
        landed += _first_boundary_from(image, max(off - back, 0), off) == off
    return landed * 2 > starts


def _first_boundary_from(image: Image, start: int, target: int) -> int:
    """The first instruction start at or after file offset `target`,
    decoding from `start`; a byte that decodes to nothing is stepped over."""
    pos = start
    while pos < target:
        end = pos
        for address, size, _, _ in image._md.disasm_lite(image.data[pos:target + 16], pos):
            end = address + size
            if address >= target or end > target:
                return address if address >= target else end
        pos = end if end > pos else pos + 1
    return pos
