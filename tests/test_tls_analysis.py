"""Locating TLS functions in files, without root: exported symbols, OpenSSL's
internal read and write functions, and the analysis cache."""
from __future__ import annotations

import capstone
import pytest

from agentsight.collectors.tls import openssl
from agentsight.collectors.tls.elf import open_elf, symbol_offsets
from agentsight.collectors.tls.libraries import OPENSSL, LibraryAnalyzer

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def _first_instruction(path: str, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        (ins,) = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(f.read(15), offset, 1)
    return ins.mnemonic


def test_libssl_reads_and_writes_are_hooked_where_they_meet():
    with open(LIBSSL, "rb") as f:
        exported = symbol_offsets(open_elf(f), openssl.ROUTES["ssl_write_internal"] + openssl.ROUTES["ssl_read_internal"])
        routed = openssl.reroute(f, exported)
    assert set(routed) == {"ssl_write_internal", "ssl_read_internal"}
    for name in ("ssl_write_internal", "ssl_read_internal"):
        assert _first_instruction(LIBSSL, routed[name]) == "push"  # emulated: no single step
    for name in exported:
        assert _first_instruction(LIBSSL, exported[name]) == "sub"  # what the reroute avoids


def test_functions_that_do_not_all_meet_are_left_alone():
    with open(LIBSSL, "rb") as f:
        exported = symbol_offsets(open_elf(f), ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"))
        # SSL_write pointed elsewhere (at SSL_read): it no longer calls the same function.
        odd = dict(exported, SSL_write=exported["SSL_read"])
        routed = openssl.reroute(f, odd)
    assert "ssl_write_internal" not in routed
    assert routed["SSL_write"] == exported["SSL_read"] and routed["SSL_write_ex"] == exported["SSL_write_ex"]
    assert "ssl_read_internal" in routed


def test_analyzer_recognises_libssl_and_caches_by_file(tmp_path):
    analyzer = LibraryAnalyzer(cache_dir=tmp_path)
    first = analyzer.analyze(LIBSSL)
    assert first.kind == OPENSSL and "ssl_write_internal" in first.functions
    assert analyzer.analyze(LIBSSL) is first


def test_non_elf_and_non_tls_files(tmp_path):
    analyzer = LibraryAnalyzer(cache_dir=tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not an executable")
    assert analyzer.analyze(str(text)) is None
    assert analyzer.analyze("/bin/ls") is None
    with pytest.raises(OSError):
        analyzer.analyze(str(tmp_path / "missing"))
