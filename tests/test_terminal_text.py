"""What a person is shown holds no control character from the traffic."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import sys
import termios
import unicodedata

import pytest

from agentsight.ui.text import printable

HOSTILE = [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xa0)] + [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # bidi embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",            # bidi isolates
    "\u200e", "\u200f", "\u061c",                      # bidi marks
    "\u2028", "\u2029",                                # line and paragraph separators
    "\u200b", "\u2060", "\ufeff", "\u00ad",            # zero-width and invisible
    "\U000e0041", "\U000e007f",                        # tag characters (hidden text)
    "\ud800",                                          # a lone surrogate, from JSON "\ud800"
]


def dangerous(s: str) -> list[str]:
    return [c for c in s if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
            and c not in "\u200c\u200d"]


@pytest.mark.parametrize("ch", HOSTILE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_format_and_bidi_character_is_written_out(ch):
    s = f"claude{ch}-x"
    out = printable(s)
    assert dangerous(out) == []
    n = ord(ch)
    want = f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
    assert out == f"claude{want}-x"
    out.encode("utf-8")  # a terminal can be written all of it


def test_text_a_person_reads_is_left_alone():
    for s in ["gpt-4o", "claude-sonnet-4-5 (thinking)", "/home/émile/projets/naïve.py",
              "日本語のファイル.txt", "مرحبا بالعالم", "emoji 👨\u200d👩\u200d👧 ✓", "tab-free, spaces ok",
              "می\u200cخواهم", "café\u0301", ""]:
        assert printable(s) == s


def test_a_terminal_attack_is_shown_not_obeyed():
    s = "gpt\x1b]0;owned\x07\x1b[2J\x1b[1;1H\u202egnp.exe"
    assert printable(s) == "gpt\\x1b]0;owned\\x07\\x1b[2J\\x1b[1;1H\\u202egnp.exe"


def test_keep_lets_newlines_through_for_blocks_of_text():
    assert printable("a\nb\tc\x1b", keep="\n") == "a\nb\\x09c\\x1b"


def test_values_of_other_types_are_shown_as_text():
    assert printable(None) == "None" and printable(3) == "3"  # type: ignore[arg-type]


# -- the live status line of `record` -------------------------------------------------------------
def _pty(rows: int = 24, columns: int = 200):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # bytes as written, no CRLF translation
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, os.fdopen(slave, "w", encoding="utf-8", errors="strict")


def _read_all(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


# What LiveStatus itself writes: a first newline, save/restore cursor,
# scrolling region, cursor position, erase line, reverse video and reset.
_OWN = re.compile(rb"^\n|\x1b7|\x1b8|\x1b\[\d*(?:;\d+)?r|\x1b\[\d+;1H|\x1b\[2K|\x1b\[7m|\x1b\[0m|\x1b\[1A")


def _llm_call(model: str):
    from agentsight.events import LlmCall, LlmResponse
    return LlmCall(ts=2_000_000_000, provider="openai", api="chat.completions", model=model, stream=False,
                   status=200, method="POST", host="api.openai.com", path="/v1/chat/completions",
                   request=None, request_headers={}, response_headers={}, response=LlmResponse(),
                   usage={"input_tokens": 1200, "output_tokens": 7}, started_ns=0, first_token_ns=None,
                   ended_ns=2_000_000_000, pid=1, tid=1, comm="agent", conn=1, side="client")


def test_the_live_status_line_writes_no_control_character_from_the_traffic(monkeypatch):
    from agentsight.ui import live

    monkeypatch.setenv("TERM", "xterm")
    master, tty = _pty()
    try:
        view = live.LiveStatus(tty)
        assert view.enabled
        view.start(lambda: 0)
        view.write([_llm_call("gpt\x1b]0;owned\x07\x1b[2J\u202e\x9b31m\ud800")])
        view.tick(live.REDRAW_SECONDS + 1)
        view.close()
        tty.flush()
        written = _read_all(master)
    finally:
        tty.close()
        os.close(master)
    rest = _OWN.sub(b"", written)
    assert b"\x1b" not in rest and b"\x07" not in rest, rest
    text = rest.decode("utf-8")
    assert dangerous(text) == [], text
    assert "gpt\\x1b]0;owned\\x07\\x1b[2J\\u202e\\x9b31m\\ud800" in text
    assert "1.2k in/7 out 2.0s" in text and "1 LLM calls" in text
