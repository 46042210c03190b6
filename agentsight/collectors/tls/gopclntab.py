"""Go's function table (pclntab) and build information, read from the file.

Every Go executable carries a table of its functions, names and address
ranges, because the runtime needs it for stack traces and garbage
collection: `-ldflags=-s -w` and `strip` remove the ELF symbols and DWARF,
never this table. Its layout (runtime/symtab.go) changed at Go 1.16,
1.18 and 1.20; each is read here. Go 1.2-1.15 tables are recognised but
not read: those releases pass arguments on the stack, which the probes do
not follow.
"""
from __future__ import annotations

import contextlib
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

# pcHeader.magic of each table layout.
MAGIC_1_20 = 0xFFFFFFF1
MAGIC_1_18 = 0xFFFFFFF0
MAGIC_1_16 = 0xFFFFFFFA
MAGIC_1_2 = 0xFFFFFFFB
_MAGICS = {MAGIC_1_20: "1.20", MAGIC_1_18: "1.18", MAGIC_1_16: "1.16", MAGIC_1_2: "1.2"}
_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")  # the second in PIE builds
_GO_SECTIONS = (".go.buildinfo", ".note.go.buildid")   # in any Go executable
BUILDINFO_MAGIC = b"\xff Go buildinf:"
_R_X86_64_RELATIVE = 8
_VERSION = re.compile(rb"go1\.(\d+)(?:\.(\d+))?")


class NotGo(Exception):
    """The file holds no Go function table (a normal outcome)."""


class PclntabError(Exception):
    """A Go function table is there but cannot be read."""


@dataclass(frozen=True)
class GoFunction:
    name: str
    start: int  # virtual address of the first instruction
    end: int    # virtual address just past the function (the next one's start)


class Image:
    """A loaded ELF file: its bytes and the map from addresses to offsets."""

    def __init__(self, elf: ELFFile, data):
        self.elf = elf
        self.data = data
        self.loads = [(s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_flags"])
                      for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]

    def offset(self, va: int) -> int | None:
        for vaddr, offset, size, _ in self.loads:
            if vaddr <= va < vaddr + size:
                return va - vaddr + offset
        return None

    def address(self, off: int) -> int | None:
        for vaddr, offset, size, _ in self.loads:
            if offset <= off < offset + size:
                return off - offset + vaddr
        return None

    def executable(self, va: int) -> bool:
        return any(vaddr <= va < vaddr + size and flags & 1 for vaddr, _, size, flags in self.loads)


@contextlib.contextmanager
def mapped_image(path: str) -> Iterator[Image | None]:
    """`path` mapped read-only as an Image while the block runs, or None
    when it is not an x86-64 ELF file."""
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
        except ELFError:
            elf = None
        if elf is None or elf["e_machine"] != "EM_X86_64":
            yield None
            return
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            yield Image(elf, data)
        finally:
            data.close()


class Pclntab:
    """The function table of one Go executable."""

    def __init__(self, image: Image):
        self.image = image
        self.offset = self._find()
        data = image.data
        magic, pad1, pad2, quantum, ptrsize = struct.unpack_from("<IBBBB", data, self.offset)
        self.layout = _MAGICS[magic]
        if self.layout == "1.2":
            raise PclntabError("a Go 1.2-1.15 function table: Go before 1.17 passes arguments on the stack, "
                               "which is not supported")
        if (pad1, pad2, quantum, ptrsize) != (0, 0, 1, 8):
            raise PclntabError(f"a Go function table for another architecture (quantum {quantum}, "
                               f"pointer size {ptrsize}); only x86-64 is supported")
        words = struct.unpack_from("<8Q", data, self.offset + 8)
        if self.layout == "1.16":
            self.nfunc, _, nameoff, _, _, _, pclnoff = words[:7]
            self.text_start = 0
        else:
            self.nfunc, _, text_start, nameoff, _, _, _, pclnoff = words
            self.text_start = text_start or self._relocated(self.offset + 24) or self._text_section()
        self.funcnames = self.offset + nameoff
        self.functab = self.offset + pclnoff
        if not 0 < self.nfunc < 1 << 24 or self.functab >= len(data) or self.funcnames >= len(data):
            raise PclntabError("the Go function table's header is inconsistent")

    def _find(self) -> int:
        for name in _SECTIONS:
            section = self.image.elf.get_section_by_name(name)
            if section is not None and section["sh_type"] != "SHT_NOBITS":
                return section["sh_offset"]
        elf = self.image.elf
        if elf.num_sections() and not any(elf.get_section_by_name(n) for n in _GO_SECTIONS):
            raise NotGo("no Go function table")
        # External linkers merge the table into .data.rel.ro in PIE builds,
        # and sstrip removes section headers: the table is found by its
        # header instead.
        for magic in _MAGICS:
            pattern = struct.pack("<I", magic) + b"\0\0\x01\x08"
            pos = self.image.data.find(pattern)
            while pos >= 0:
                if self._plausible(pos):
                    return pos
                pos = self.image.data.find(pattern, pos + 1)
        raise NotGo("no Go function table")

    def _plausible(self, pos: int) -> bool:
        data = self.image.data
        try:
            magic, nfunc = struct.unpack_from("<I4xQ", data, pos)
            # The five table offsets, after nfunc, nfiles and (from 1.18) textStart.
            offsets = struct.unpack_from("<5Q", data, pos + (24 if magic == MAGIC_1_16 else 32))
        except struct.error:
            return False
        in_file = all(8 < o < len(data) - pos for o in offsets)
        return 0 < nfunc < 1 << 24 and in_file and list(offsets) == sorted(offsets)

    def _relocated(self, off: int) -> int | None:
        """The value a dynamic relocation writes at file offset `off` (PIE
        builds linked externally leave the field zero in the file)."""
        va = self.image.address(off)
        if va is None:
            return None
        for section in self.image.elf.iter_sections():
            if isinstance(section, RelocationSection) and section["sh_type"] == "SHT_RELA":
                for rel in section.iter_relocations():
                    if rel["r_offset"] == va and rel["r_info_type"] == _R_X86_64_RELATIVE:
                        return rel["r_addend"]
        return None

    def _text_section(self) -> int:
        text = self.image.elf.get_section_by_name(".text")
        if text is None:
            raise PclntabError("the Go function table gives no text start and the file has no .text section")
        return text["sh_addr"]

    def _entry(self, i: int) -> tuple[int, int]:
        """(start address, offset of the _func record) of function i; i == nfunc
        gives the end of the last function."""
        if self.layout == "1.16":
            entry, funcoff = struct.unpack_from("<QQ", self.image.data, self.functab + 16 * i)
            return entry, funcoff
        entryoff, funcoff = struct.unpack_from("<II", self.image.data, self.functab + 8 * i)
        return self.text_start + entryoff, funcoff

    def _name_offset(self, funcoff: int) -> int:
        # _func: entry (uintptr before 1.18, uint32 after), then nameOff int32.
        skip = 8 if self.layout == "1.16" else 4
        return struct.unpack_from("<i", self.image.data, self.functab + funcoff + skip)[0]

    def find(self, names) -> dict[str, GoFunction]:
        """The named functions that the table holds."""
        data = self.image.data
        wanted = {}
        for name in names:
            encoded = b"\0" + name.encode() + b"\0"
            # A name shared by two functions (never for methods) is found once.
            pos = data.find(encoded, self.funcnames - 1)
            if pos >= 0:
                wanted[pos + 1 - self.funcnames] = name
        found: dict[str, GoFunction] = {}
        if not wanted:
            return found
        table = memoryview(data)[self.functab:]
        step = 16 if self.layout == "1.16" else 8
        unpack = struct.Struct("<QQ" if step == 16 else "<II").unpack_from
        skip = 8 if self.layout == "1.16" else 4
        name_at = struct.Struct("<i").unpack_from
        for i in range(self.nfunc):
            _, funcoff = unpack(table, step * i)
            nameoff = name_at(table, funcoff + skip)[0]
            name = wanted.get(nameoff)
            if name is not None:
                start, _ = self._entry(i)
                end, _ = self._entry(i + 1)
                if not start < end or not self.image.executable(start):
                    raise PclntabError(f"{name}: its address range {start:#x}-{end:#x} is not code")
                found[name] = GoFunction(name, start, end)
                if len(found) == len(wanted):
                    break
        return found


def go_version(image: Image) -> tuple[int, int] | None:
    """(1, minor) of the Go release that built the file, from its build
    information; None if it cannot be read."""
    data = image.data
    section = image.elf.get_section_by_name(".go.buildinfo")
    pos = section["sh_offset"] if section is not None else data.find(BUILDINFO_MAGIC)
    if pos < 0 or data[pos:pos + 14] != BUILDINFO_MAGIC:
        return None
    ptrsize, flags = data[pos + 14], data[pos + 15]
    if flags & 2:
        # Go 1.18+: the version follows inline, as a varint-prefixed string.
        text = bytes(data[pos + 32:pos + 64])
    else:
        # Before: a pointer to a Go string (pointer, length).
        if ptrsize != 8:
            return None
        (string_va,) = struct.unpack_from("<Q", data, pos + 16)
        string_off = image.offset(string_va)
        if string_off is None:
            return None
        ptr, length = struct.unpack_from("<QQ", data, string_off)
        text_off = image.offset(ptr)
        if text_off is None or not 0 < length < 64:
            return None
        text = bytes(data[text_off:text_off + length])
    m = _VERSION.search(text)
    return (1, int(m.group(1))) if m else None
