"""Masking of secrets in payloads and text, at the function level: the
trigger words that decide which patterns run are found exactly as a search
for each word would find them, and what they let through is masked."""
from __future__ import annotations

import random

import pytest

from agentsight.analyzers import redact
from agentsight.analyzers.redact import mask_bytes, mask_text, redact_text


def _searched(lower, words):
    return frozenset(w for w in words if w in lower)


def _found(s):
    """The words _spans lets decide, through its own finder."""
    text = isinstance(s, str)
    automaton, common = redact._TEXT_FINDER if text else redact._BYTES_FINDER
    lower = s.lower()
    words = {w for _, w in automaton.iter(lower if text else lower.decode("latin-1"))}
    return frozenset(words | {w for w in common if w in lower})


@pytest.mark.parametrize("text", [False, True], ids=["bytes", "text"])
def test_trigger_words_are_found_as_a_search_for_each_finds_them(text):
    """Overlapping words (pass/passw, -u/--user), words at both ends,
    upper case, bytes above 0x7f, and payloads with none of them."""
    words = sorted(redact._TEXT_WORDS if text else redact._BYTES_WORDS)
    rnd = random.Random(3)
    pieces = [w if text else w.decode("latin-1") for w in words] + ["x", " ", "\u00e9", "\xff", "Pass", "TOKEN",
                                                                        "--USER", "Bearer ", "\r\n", '"']
    for _ in range(3000):
        s = "".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 12)))
        payload = s if text else s.encode("latin-1")
        assert _found(payload) == _searched(payload.lower(), words), payload


def test_masked_where_the_words_let_a_pattern_run():
    key, header = b"sk-abcdefghijklmnopqrstu", b"hunter2hunter2"
    request = b"GET /v1?api_key=" + key + b" HTTP/1.1\r\nX-Api-Key: " + header + b"\r\n\r\n"
    assert mask_bytes(request) == request.replace(key, b"*" * len(key)).replace(header, b"*" * len(header))
    assert mask_text('{"model":"m","API_KEY":"abc123"}') == '{"model":"m","API_KEY":"******"}'
    assert redact_text("curl -u alice:s3cret https://x") == "curl -u alice:[REDACTED] https://x"
    plain = b'data: {"type":"content_block_delta","delta":{"text":"hello"}}\n\n' * 300
    assert mask_bytes(plain) is plain  # nothing to mask: the payload itself, not a copy
