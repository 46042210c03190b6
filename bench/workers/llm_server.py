"""The LLM mock of the agent-like workload: tests/llm_mock.py's LLMMock on
127.0.0.1 (OpenAI, Anthropic, Gemini endpoints; SSE streaming). Prints
{"pid", "base_url", "ca_file"}; commands on stdin, one JSON line each:
    script TEXT_CHARS PIECE DELAY_S   what the next calls stream: TEXT_CHARS
                                      characters in deltas of PIECE, DELAY_S apart
    reset                             forget recorded requests and events

    python bench/workers/llm_server.py
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.llm_mock import LLMMock, Script  # noqa: E402

WORDS = "the agent reads the file then decides which tool to call next ".split()

with LLMMock(Script()) as mock:
    print(json.dumps({"pid": os.getpid(), "base_url": mock.base_url, "ca_file": mock.ca_file}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if parts[:1] == ["script"]:
            chars, piece, delay = int(parts[1]), int(parts[2]), float(parts[3])
            text = " ".join(WORDS[i % len(WORDS)] for i in range(chars))[:chars]
            mock.script = Script(text=text, piece=piece, stream_delay=delay, output_tokens=chars // 4)
        elif parts[:1] == ["reset"]:
            with mock._lock:
                mock.requests.clear()
            with mock._recorder.lock:
                mock._recorder.events.clear()
        else:
            break
        print(json.dumps({"ok": True}), flush=True)
