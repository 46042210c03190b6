"""An agent-like client: CALLS streaming chat completions through the openai
SDK (httpx2 over CPython's ssl) to the local mock, each followed by a short
subprocess, as an agent runs a tool. One untimed warm-up call first.
Writes {"seconds", "calls", "chunks"} to RESULT.

    python bench/workers/agent_client.py BASE_URL CA_FILE CALLS RESULT [TOOL ...]
"""
import json
import ssl
import subprocess
import sys
import time

import httpx2
import openai

base_url, ca_file, calls, result = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tool = sys.argv[5:] or ["true"]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-bench-not-a-key", max_retries=0,
                       http_client=httpx2.Client(verify=ssl.create_default_context(cafile=ca_file), timeout=60))


def one_call(i: int) -> int:
    stream = client.chat.completions.create(
        model="gpt-bench", stream=True,
        messages=[{"role": "system", "content": "You are a coding agent."},
                  {"role": "user", "content": f"step {i}: read the file and decide what to run next"}])
    text, chunks = [], 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    subprocess.run(tool, check=True, stdout=subprocess.DEVNULL)
    return chunks


one_call(-1)
t = time.perf_counter()
chunks = sum(one_call(i) for i in range(calls))
seconds = time.perf_counter() - t
with open(result, "w") as f:
    json.dump({"seconds": seconds, "calls": calls, "chunks": chunks}, f)
