"""Text from the traffic, made safe to show on a terminal.

Model names, tool names, argv and file paths come from the traced programs
and the APIs they call: any of them can hold ESC or BEL (which a terminal
obeys: move the cursor, retitle the window, rewrite what is on screen) or a
Unicode bidi override (which reorders what a person reads).  Whatever a
person is shown goes through :func:`printable` first.
"""
from __future__ import annotations

import unicodedata

# Cc: C0, DEL, C1.  Cf: bidi embeddings, overrides, isolates and marks,
# zero-width and invisible characters, the tag characters that can hide text.
# Zl, Zp: line and paragraph separators.  Cs: lone surrogates, which no
# terminal encoding can write.
_ESCAPED = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
# Joiners shape emoji and scripts (Persian, Indic); they hide or move nothing.
_JOINERS = frozenset(("\u200c", "\u200d"))


def printable(s: str, keep: str = "") -> str:
    """``s`` with every control, format and separator character written out
    as an escape (``\\x1b``, ``\\u202e``, ``\\U000e0041``); characters in
    ``keep`` (say ``"\\n"`` for a block of text) stay as they are."""
    if not isinstance(s, str):
        s = str(s)
    if s.isprintable():  # none of them (a fast check: it also refuses some harmless ones)
        return s
    out = []
    for ch in s:
        if ch in keep or ch in _JOINERS or unicodedata.category(ch) not in _ESCAPED:
            out.append(ch)
        else:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)
