"""Locating ring's AEAD functions in a Rust binary, stripped or not: the
record layer under rustls on its ring provider.

ring (0.17) describes each AEAD algorithm with a static struct of function
pointers, `ring::aead::Algorithm { init, seal, open, key_len, id }`, and
rustls seals and opens every TLS record through the `seal` and `open` of
AES_128_GCM, AES_256_GCM or CHACHA20_POLY1305. The statics survive
stripping: in .data.rel.ro, three pointers to code followed by the key
length (16 or 32) and the algorithm's id (0, 1, 2), the two AES-GCM ones
sharing their seal and open. In a PIE the pointers are relocations, read
from .rela.dyn. Each pointer must be a function entry of the unwind table.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass


from .aead import LocateError as AeadLocateError, function_starts
from .gopclntab import Image, mapped_image

RING_CRATE = b"/ring-0.17."
_R_X86_64_RELATIVE = 8
# (key length, id) of each static, and the names of its functions.
ALGORITHMS = {
    (16, 0): ("aes_gcm_init_128", "aes_gcm_seal", "aes_gcm_open"),
    (32, 1): ("aes_gcm_init_256", "aes_gcm_seal", "aes_gcm_open"),
    (32, 2): ("chacha20_poly1305_init", "chacha20_poly1305_seal", "chacha20_poly1305_open"),
}


class LocateError(Exception):
    """ring is there but its AEAD algorithms cannot be found; says why."""


@dataclass
class RingFunctions:
    functions: dict[str, int]  # function name -> file offset
    rustls: bool


def locate(path: str) -> RingFunctions | None:
    """ring's AEAD functions in `path`, or None if it does not hold ring 0.17.
    Raises LocateError."""
    with mapped_image(path) as image:
        if image is None or image.data.find(RING_CRATE) < 0:
            return None
        return _locate(image)


def _locate(image: Image) -> RingFunctions:
    section = image.elf.get_section_by_name(".data.rel.ro")
    if section is None:
        raise LocateError("no .data.rel.ro section")
    lo, size = section["sh_addr"], section["sh_size"]
    words = _words(image, lo, size)
    try:
        entries = set(function_starts(image))
    except AeadLocateError as exc:
        raise LocateError(str(exc)) from None
    found: dict[str, int] = {}
    statics = {}
    for slot in range(0, len(words) - 4):
        key_len, algorithm_id = words[slot + 3], words[slot + 4]
        names = ALGORITHMS.get((key_len, algorithm_id))
        if names is None:
            continue
        pointers = words[slot:slot + 3]
        if len(set(pointers)) != 3 or not all(p in entries for p in pointers):
            continue
        if (key_len, algorithm_id) in statics:
            raise LocateError(f"two statics look like ring's {names[1].rsplit('_', 1)[0]}")
        statics[(key_len, algorithm_id)] = pointers
        for name, pointer in zip(names, pointers):
            off = image.offset(pointer)
            if off is None:
                raise LocateError(f"{name} at {pointer:#x} is not in the file")
            found[name] = off
    aes_128, aes_256 = statics.get((16, 0)), statics.get((32, 1))
    if aes_128 is None or aes_256 is None:
        raise LocateError("ring's AES-GCM algorithms not found")
    if aes_128[1:] != aes_256[1:]:
        raise LocateError("ring's two AES-GCM algorithms do not share seal and open")
    return RingFunctions(found, image.data.find(b"/rustls-0.") >= 0)


def _words(image: Image, va: int, size: int) -> list[int]:
    """The 8-byte words of [va, va+size) as loaded: relocated where a
    relative relocation applies (PIE), as in the file elsewhere."""
    off = image.offset(va)
    if off is None:
        raise LocateError(".data.rel.ro is not in the file")
    n = size // 8
    words = list(struct.unpack_from(f"<{n}Q", image.data, off))
    for rel in image.elf.iter_sections():
        if rel["sh_type"] != "SHT_RELA" or rel["sh_entsize"] != 24:
            continue
        table = image.data[rel["sh_offset"]:rel["sh_offset"] + rel["sh_size"]]
        for r_offset, r_info, r_addend in struct.iter_unpack("<QQq", table):
            if r_info & 0xFFFFFFFF == _R_X86_64_RELATIVE and va <= r_offset < va + 8 * n and not r_offset & 7:
                words[(r_offset - va) // 8] = r_addend
    return words

