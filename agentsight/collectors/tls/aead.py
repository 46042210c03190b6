"""Locating the AEAD functions of aws-lc (or BoringSSL's libcrypto) in a
stripped binary: the record layer under rustls on aws-lc-rs, and under any
TLS stack built on that library.

Every TLS 1.2 and 1.3 record passes through EVP_AEAD_CTX_seal (or
_seal_scatter) in plaintext on its way out, and comes out of
EVP_AEAD_CTX_open in plaintext on its way in. These are C functions whose
shape does not depend on the TLS stack above them, and they report errors
with ERR_put_error(ERR_LIB_CIPHER, 0, reason, "<path>/cipher/aead.c",
line), so in a stripped binary each is recognised by the set of reason
codes it reports next to a reference to that file name (the codes are
part of the public headers, the same in aws-lc and BoringSSL):

    EVP_AEAD_CTX_init                    {NO_DIRECTION_SET}
    EVP_AEAD_CTX_init_with_direction     {UNSUPPORTED_KEY_SIZE}
    EVP_AEAD_CTX_seal                    {TOO_LARGE, BUFFER_TOO_SMALL, OUTPUT_ALIASES_INPUT}
    EVP_AEAD_CTX_seal_scatter            {OUTPUT_ALIASES_INPUT, INVALID_OPERATION}
    EVP_AEAD_CTX_open                    {OUTPUT_ALIASES_INPUT, BAD_DECRYPT, BUFFER_TOO_SMALL}

Function boundaries come from the unwind table (.eh_frame_hdr), which
stripped binaries keep for panics and C++ exceptions, so each offset is a
real function entry.
"""
from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass

import capstone

from .gopclntab import Image, mapped_image

AEAD_FILE_SUFFIXES = (b"/cipher/aead.c\0", b"/cipher/aead.cc\0", b"/cipher/aead.cc.inc\0")
ERR_LIB_CIPHER = 30
BAD_DECRYPT, BUFFER_TOO_SMALL, CTRL_NOT_IMPLEMENTED = 101, 103, 104
INVALID_OPERATION, OUTPUT_ALIASES_INPUT, TOO_LARGE = 112, 115, 117
UNSUPPORTED_KEY_SIZE, NO_DIRECTION_SET = 120, 124

INIT = "EVP_AEAD_CTX_init"
INIT_WITH_DIRECTION = "EVP_AEAD_CTX_init_with_direction"
SEAL = "EVP_AEAD_CTX_seal"
SEAL_SCATTER = "EVP_AEAD_CTX_seal_scatter"
OPEN = "EVP_AEAD_CTX_open"
# Recognised by (reasons that must all be there, reasons that must not).
SHAPES = {
    INIT: ({NO_DIRECTION_SET}, {UNSUPPORTED_KEY_SIZE, OUTPUT_ALIASES_INPUT}),
    INIT_WITH_DIRECTION: ({UNSUPPORTED_KEY_SIZE}, {OUTPUT_ALIASES_INPUT}),
    SEAL: ({TOO_LARGE, BUFFER_TOO_SMALL, OUTPUT_ALIASES_INPUT}, {BAD_DECRYPT}),
    SEAL_SCATTER: ({OUTPUT_ALIASES_INPUT, INVALID_OPERATION}, {BAD_DECRYPT, BUFFER_TOO_SMALL}),
    OPEN: ({OUTPUT_ALIASES_INPUT, BAD_DECRYPT, BUFFER_TOO_SMALL}, {TOO_LARGE}),
}
# Without these the records cannot be read or given their connection.
REQUIRED = (OPEN, INIT_WITH_DIRECTION)
_MAX_FUNCTION = 8192
_WINDOW = 8  # instructions around a load of the file name where its reason is set
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.S)
_DW_EH_PE_datarel_sdata4 = 0x3B
_DW_EH_PE_udata4 = 0x03


class LocateError(Exception):
    """The AEAD code is there but its functions cannot be told apart; says why."""


@dataclass
class AeadFunctions:
    functions: dict[str, int]  # function name -> file offset
    library: str               # "aws-lc" or "boringssl"
    rustls: bool               # rustls is the TLS stack above it


def file_name_at(data) -> int | None:
    """Offset of the aead.c file name in `data`, if it holds one."""
    for suffix in AEAD_FILE_SUFFIXES:
        end = data.find(suffix)
        if end >= 0:
            return data.rfind(b"\0", 0, end) + 1
    return None


def locate(path: str) -> AeadFunctions | None:
    """The AEAD functions in `path`, or None when it has no aws-lc/BoringSSL
    aead.c. Raises LocateError."""
    with mapped_image(path) as image:
        return _locate(image) if image is not None else None


def _locate(image: Image) -> AeadFunctions | None:
    data = image.data
    name_off = file_name_at(data)
    if name_off is None:
        return None
    name_va = image.address(name_off)
    if name_va is None:
        return None
    starts = function_starts(image)
    text = image.elf.get_section_by_name(".text")
    if text is None:
        raise LocateError("no .text section")
    sites = _references(image, name_va, text["sh_offset"], text["sh_size"], text["sh_addr"])
    if not sites:
        raise LocateError("the aead.c file name is never referenced from code")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    by_function: dict[int, set[int]] = {}
    for site in sites:
        i = bisect.bisect_right(starts, site) - 1
        if i < 0:
            continue
        start, end = starts[i], starts[i + 1] if i + 1 < len(starts) else site + 64
        by_function.setdefault(start, set()).update(_reasons(image, md, start, min(end, start + _MAX_FUNCTION),
                                                             name_va))
    found: dict[str, int] = {}
    for name, (needed, excluded) in SHAPES.items():
        matches = [start for start, reasons in by_function.items() if needed <= reasons and not reasons & excluded]
        if len(matches) > 1:
            raise LocateError(f"{len(matches)} functions look like {name}")
        if matches:
            found[name] = _file_offset(image, matches[0])
    missing = [name for name in REQUIRED if name not in found]
    if missing or not (SEAL in found or SEAL_SCATTER in found):
        raise LocateError("not told apart: " + ", ".join(missing or [SEAL]))
    library = "aws-lc" if data[name_off:name_off + 256].find(b"/aws-lc/") >= 0 or data.find(b"AWS-LC") >= 0 \
        else "boringssl"
    return AeadFunctions(found, library, data.find(b"/rustls-0.") >= 0 or data.find(b"rustls::") >= 0)


def function_starts(image: Image) -> list[int]:
    """Sorted entry addresses of every function with unwind information."""
    hdr = image.elf.get_section_by_name(".eh_frame_hdr")
    if hdr is None:
        raise LocateError("no .eh_frame_hdr: function boundaries unknown")
    data = hdr.data()
    version, _, count_enc, table_enc = data[:4]
    if version != 1 or table_enc != _DW_EH_PE_datarel_sdata4 or count_enc != _DW_EH_PE_udata4:
        raise LocateError(f"unsupported .eh_frame_hdr encoding ({version}, {count_enc:#x}, {table_enc:#x})")
    (count,) = struct.unpack_from("<I", data, 8)
    base = hdr["sh_addr"]
    table = struct.unpack_from(f"<{2 * count}i", data, 12)
    return sorted(base + table[2 * i] for i in range(count))


def _references(image: Image, target: int, text_off: int, text_size: int, text_va: int) -> list[int]:
    """Addresses of the rip-relative lea instructions that load `target`."""
    data = image.data
    delta = text_va - text_off
    sites = []
    for m in _LEA_RIP.finditer(data, text_off, text_off + text_size):
        p = m.start()
        (disp,) = struct.unpack_from("<i", data, p + 3)
        if p + delta + 7 + disp == target:
            sites.append(p + delta)
    if target < 1 << 31:
        # Non-PIE code may load the address as an immediate instead.
        pattern = struct.pack("<I", target)
        i = data.find(pattern, text_off, text_off + text_size)
        while i != -1:
            if 0xB8 <= data[i - 1] <= 0xBF:
                sites.append(i - 1 + delta)
            i = data.find(pattern, i + 1, text_off + text_size)
    return sites


def _reasons(image: Image, md, start: int, end: int, name_va: int) -> set[int]:
    """Reason codes passed in edx by the error calls of the function at
    start: the `mov edx, imm` nearest each load of the file name, before the
    call that follows it."""
    off = _file_offset(image, start)
    insns = list(md.disasm(image.data[off:off + (end - start)], start))
    reasons = set()
    for i, ins in enumerate(insns):
        if not _loads(ins, name_va):
            continue
        window = insns[max(0, i - _WINDOW):i + _WINDOW]
        lo = i - max(0, i - _WINDOW)
        # Only within the error call's own sequence: from the previous call
        # or jump up to the call that follows.
        before = next((k for k in range(lo - 1, -1, -1) if window[k].mnemonic == "call" or
                       window[k].mnemonic.startswith("j")), -1)
        after = next((k for k in range(lo + 1, len(window)) if window[k].mnemonic == "call"), len(window))
        for ins2 in window[before + 1:after]:
            if ins2.mnemonic == "mov" and ins2.op_str.startswith("edx, "):
                try:
                    reasons.add(int(ins2.op_str.split(", ", 1)[1], 0))
                except ValueError:
                    pass
    return reasons


def _file_offset(image: Image, va: int) -> int:
    off = image.offset(va)
    if off is None:
        raise LocateError(f"{va:#x} is not in the file")
    return off


def _loads(ins, name_va: int) -> bool:
    if ins.mnemonic == "lea" and "[rip " in ins.op_str:
        m = re.search(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]", ins.op_str)
        if m:
            disp = int(m.group(2), 0) * (1 if m.group(1) == "+" else -1)
            return ins.address + ins.size + disp == name_va
    return ins.mnemonic == "mov" and ins.op_str.endswith(f", {name_va:#x}")
