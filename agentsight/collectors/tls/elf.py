"""What agentsight reads from ELF files: exported functions and build ids."""
from __future__ import annotations

from elftools.elf.elffile import ELFFile
from elftools.elf.hash import GNUHashSection
from elftools.elf.sections import NoteSection, SymbolTableSection


def open_elf(f) -> ELFFile:
    return ELFFile(f)


def symbol_offsets(elf: ELFFile, names) -> dict[str, int]:
    """File offsets of the named function symbols the file defines."""
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
    if isinstance(gnu_hash, GNUHashSection):
        return gnu_hash.get_symbol
    tables = [s for s in (elf.get_section_by_name(".dynsym"), elf.get_section_by_name(".symtab"))
              if isinstance(s, SymbolTableSection)]

    def lookup(name):
        for table in tables:
            found = table.get_symbol_by_name(name)
            if found:
                return found[0]
        return None

    return lookup


def build_id(elf: ELFFile) -> str | None:
    """The GNU build id, or else the build id Go's linker writes."""
    go_id = None
    for section in elf.iter_sections():
        if not isinstance(section, NoteSection):
            continue
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return note["n_desc"]
            # Go's note: name "Go", type 4 (which pyelftools reads as a GNU type).
            if note["n_name"] == "Go" and section.name == ".note.go.buildid" and isinstance(note["n_desc"], bytes):
                go_id = "go:" + note["n_desc"].decode("ascii", "replace")
    return go_id
