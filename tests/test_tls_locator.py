"""The stripped-BoringSSL locator against a ground truth, without root.

tests/data/boringssl-shape holds a program shaped like BoringSSL's
ssl_lib.cc: the same error calls with the same reason codes and the same
relations between SSL_write, SSL_read, SSL_peek, the internal read routine
and SSL_do_handshake. Built here by two compilers with many flags, its
stripped copy must be located at exactly the offsets of the symbols the
unstripped copy keeps; built scrambled, it must be refused and never
hooked. Real Bun and Chromium builds are in test_tls_builds.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agentsight.collectors.tls import boringssl, x86
from support import REPO

SHAPE = REPO / "tests" / "data" / "boringssl-shape"
FUNCTIONS = ("SSL_write", "SSL_read", "SSL_do_handshake")

# (compiler family, compile flags, link flags): code for a fixed address and
# position-independent, optimised for speed and size, packed functions, frame
# pointers kept or not, link-time optimisation (which drops the error
# reporter's unused argument and inlines across files).
SHAPES = [
    ("clang", "-O2 -fno-pie", "-no-pie"),
    ("clang", "-O2 -fPIE", "-pie"),
    ("clang", "-O3 -fno-pie", "-no-pie"),
    ("clang", "-Os -fPIE", "-pie"),
    ("clang", "-O1 -fno-omit-frame-pointer -fPIE", "-pie"),
    ("clang", "-O2 -falign-functions=1 -fPIE", "-pie"),
    ("clang", "-O2 -flto -fPIE", "-flto -pie"),
    ("gcc", "-O2 -fno-pie", "-no-pie"),
    ("gcc", "-O2 -fPIE", "-pie"),
    ("gcc", "-Os -fPIE", "-pie"),
    ("gcc", "-O1 -fPIE", "-pie"),
    ("gcc", "-O3 -fno-omit-frame-pointer -fno-pie", "-no-pie"),
    ("gcc", "-O2 -flto -fPIE", "-flto -pie"),
]


def build(tmp: Path, family: str, cflags: str, ldflags: str, scramble: int = 0) -> Path:
    """The program built with `family` and flags, symbols kept; returns its path."""
    cc, cxx = {"clang": ("clang", "clang++"), "gcc": ("gcc", "g++")}[family]
    for tool in (cc, cxx):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed; scripts/test.sh installs it")
    flags = cflags.split() + ([f"-DSCRAMBLE={scramble}"] if scramble else [])
    objects = []
    for source, compiler in ((SHAPE / "ssl" / "ssl_lib.cc", cxx), (SHAPE / "err.c", cc), (SHAPE / "main.c", cc)):
        obj = tmp / (source.stem + ".o")
        # The client code is never part of the link-time optimisation (see main.c).
        own = [f for f in flags if f != "-flto"] if source.name == "main.c" else flags
        subprocess.run([compiler, *own, "-c", str(source), "-o", str(obj)], check=True, capture_output=True)
        objects.append(str(obj))
    out = tmp / "shape"
    subprocess.run([cxx, *flags, *ldflags.split(), *objects, "-o", str(out)], check=True, capture_output=True)
    if not scramble:
        ran = subprocess.run([str(out)], capture_output=True, text=True, timeout=10)
        assert ran.returncode == 0 and ran.stdout.endswith("ok\n"), ran
    return out


def symbol_offsets(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]

        def offset(va: int) -> int:
            seg = next(s for s in loads if s["p_vaddr"] <= va < s["p_vaddr"] + s["p_filesz"])
            return va - seg["p_vaddr"] + seg["p_offset"]

        return {name: offset(symbols[name]) for name in FUNCTIONS}


def stripped(path: Path) -> Path:
    copy = path.with_name(path.name + ".stripped")
    subprocess.run(["strip", "-o", str(copy), str(path)], check=True)
    return copy


@pytest.mark.parametrize("family,cflags,ldflags", SHAPES, ids=[f"{f} {c}" for f, c, _ in SHAPES])
def test_located_where_the_symbols_say(tmp_path, family, cflags, ldflags):
    program = build(tmp_path, family, cflags, ldflags)
    found = boringssl.locate(str(stripped(program)))
    assert found.functions == symbol_offsets(program), found.evidence
    assert set(found.evidence) == set(FUNCTIONS)


SCRAMBLES = {
    1: "2 functions (at offset",                  # two functions fit SSL_write
    2: "does not call the SSL_do_handshake",      # writers and readers do not call it
    3: "fit SSL_peek",                            # SSL_read cannot be told from SSL_peek
    4: "does not read its",                       # SSL_write takes buffer and length from elsewhere
    5: "SSL_",                                    # reason codes moved between functions
}


@pytest.mark.parametrize("scramble", sorted(SCRAMBLES))
@pytest.mark.parametrize("family,cflags,ldflags", [SHAPES[1], SHAPES[8]], ids=["clang", "gcc"])
def test_scrambled_is_refused_with_a_reason(tmp_path, scramble, family, cflags, ldflags):
    program = stripped(build(tmp_path, family, cflags, ldflags, scramble))
    with pytest.raises(boringssl.AnalysisError) as refused:
        boringssl.locate(str(program))
    assert SCRAMBLES[scramble] in str(refused.value)
    assert "ssl_lib.cc" in refused.value.detail


def test_scrambled_is_never_hooked_and_probes_says_why(tmp_path):
    program = stripped(build(tmp_path, "clang", "-O2 -fPIE", "-pie", scramble=1))
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "agentsight", "probes", "--json", "--binary", str(program)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    report = json.loads(out.stdout)
    assert report["files"] == []
    (note,) = report["notes"]
    assert note.startswith(f"{program}: BoringSSL is linked in, but 2 functions")
    assert "so it is not hooked" in note and "\n" not in note
    (failure,) = report["failures"]
    assert failure["path"] == str(program) and "reason codes" in failure["detail"]


def test_not_boringssl():
    with pytest.raises(boringssl.NotBoringSSL):
        boringssl.locate("/bin/ls")
    with pytest.raises(boringssl.NotBoringSSL):
        boringssl.locate(__file__)


def test_references_and_calls_are_found_in_both_code_models(tmp_path):
    """The byte scans agree with a disassembler on which instructions load
    the file name and which calls lead to the error reporter."""
    for cflags, ldflags in (("-O2 -fno-pie", "-no-pie"), ("-O2 -fPIE", "-pie")):
        program = build(tmp_path, "clang", cflags, ldflags)
        with x86.Image(str(program)) as image:
            (name,) = [a for a in image.strings_ending(boringssl.FILE_NAME)]
            sites = x86.references(image, name)
            dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(program)],
                                  capture_output=True, text=True, check=True).stdout
            loading = {int(line.split(":")[0], 16) for line in dump.splitlines()
                       if f"{name:x}" in line and ("lea" in line or "mov" in line) and ":" in line}
            assert set(sites) == loading and sites
            reporter = symbol_offsets_va(program, "ERR_put_error")
            calls = {site for site, _ in x86.branches_into(image, [(reporter, reporter + 1)])}
            called = {int(line.split(":")[0], 16) for line in dump.splitlines()
                      if "call" in line and "<ERR_put_error>" in line}
            assert calls == called and calls


def symbol_offsets_va(path: Path, name: str) -> int:
    with open(path, "rb") as f:
        return next(s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name == name)


def test_cached_result_is_used_only_where_the_code_matches(tmp_path):
    """A cached analysis is found by build id; it is used for a file with that
    id only if the code it located is there (a record written by another
    version, with fields this one does not know, is still read)."""
    from agentsight.collectors.tls.libraries import AnalysisFailed, LibraryAnalyzer

    program = stripped(build(tmp_path, "clang", "-O2 -fPIE", "-pie"))
    cache = tmp_path / "cache"
    first = LibraryAnalyzer(cache_dir=cache).analyze(str(program))
    assert not first.from_cache and first.entry_bytes
    records = json.loads((cache / "tls-libraries.json").read_text())
    for record in records.values():
        record["library"]["a_field_of_another_version"] = 1
    (cache / "tls-libraries.json").write_text(json.dumps(records))
    again = LibraryAnalyzer(cache_dir=cache).analyze(str(program))
    assert again.from_cache and again.functions == first.functions
    # Same build id, other code at those offsets: analysed afresh, not trusted.
    moved = tmp_path / "moved"
    data = bytearray(program.read_bytes())
    offset = first.functions["SSL_write"]
    data[offset:offset + 4] = b"\xcc\xcc\xcc\xcc"
    moved.write_bytes(bytes(data))
    try:
        redone = LibraryAnalyzer(cache_dir=cache).analyze(str(moved))
        assert not redone.from_cache
    except AnalysisFailed:
        pass  # refused: as good as not trusting the cache
