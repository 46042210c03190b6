"""The report renderer: what led to each LLM call and what came back, cut
with visible markers; latency, time to first token and tokens; escaping of
everything it prints; --json uncut."""
from __future__ import annotations

import sqlite3
import unicodedata

from agent_world import World
from agentsight.sinks.session import open_session
from agentsight.ui.report import build_report, render_text

URL = "https://127.0.0.1:8443/x"


def _report(w: World, tmp_path, roots: set[int]) -> tuple[dict, str]:
    path = w.session(str(tmp_path / "s.db"), roots=roots)
    report = build_report(open_session(path), path)
    return report, render_text(report)


def _no_controls(text: str) -> None:
    bad = [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
    assert bad == [], bad


def test_messages_are_cut_with_a_marker_and_json_keeps_them_whole(tmp_path):
    w = World()
    agent = w.start_agent(["agent"])
    prompt = "\n".join(f"prompt line {i}" for i in range(9))
    long_line = "x" * 400
    answer = "\n".join([long_line] + [f"answer line {i}" for i in range(11)])
    w.llm(agent, request={"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": prompt}]},
          text=answer)
    report, text = _report(w, tmp_path, {agent})
    lines = text.splitlines()
    user = lines.index("      ← user: prompt line 0")
    assert lines[user + 1:user + 5] == [f"              prompt line {i}" for i in (1, 2, 3)] + \
        ["              … (5 more lines)"]
    said = next(i for i, l in enumerate(lines) if l.startswith("      → assistant: "))
    assert lines[said] == "      → assistant: " + "x" * 159 + "…"
    assert lines[said + 4] == "                   … (8 more lines)"
    (call,) = report["llm_calls"]
    assert call["text"] == answer and call["input"] == {"kind": "user", "text": prompt}


def test_latency_time_to_first_token_and_tokens(tmp_path):
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, ms=1234, first_token_ms=412, text="streamed",
          usage={"input_tokens": 1200, "output_tokens": 50, "cache_read_input_tokens": 1000,
                 "cache_creation_input_tokens": 200, "reasoning_tokens": 20})
    w.llm(agent, ms=3, text="fast", request={"model": "m", "max_tokens": 9,
                                             "messages": [{"role": "user", "content": "again"}]})
    report, text = _report(w, tmp_path, {agent})
    first, second = report["llm_calls"]
    assert (first["ttft_ms"], first["latency_ms"]) == (412.0, 1234.0)
    assert (first["cache_read_tokens"], first["cache_write_tokens"]) == (1000, 200)
    assert "tokens in 1200 (cache read 1000, cache write 200) · out 50 (reasoning 20) · first token 412 ms · " \
           "total 1.23 s" in text
    assert second["latency_ms"] == 3.0 and second["ttft_ms"] is None
    assert "first token n/a (not streamed) · total 3.0 ms" in text
    assert "0.00 s" not in text


def test_tool_results_argv_cut_and_escaping(tmp_path):
    w = World()
    agent = w.start_agent(["agent"])
    evil = "\x1b]0;pwned\x07\x1b[2J"
    command = f"echo '{evil}' > /w/out{evil}.txt && curl -s {URL}/{'a' * 300}"
    w.llm(agent, tools=[("toolu_1", "Bash\u202e", {"command": command})], text=f"running it {evil}",
          model=f"claude{evil}")
    shell = w.spawn(agent, ["/bin/bash", "-c", command])
    w.write(shell, f"/w/out{evil}.txt")
    curl = w.spawn(shell, ["curl", "-s", f"{URL}/{'a' * 300}"])
    w.exit(curl)
    w.exit(shell)
    w.tick(1200)
    w.llm(agent, results=["toolu_1"], text="done")
    report, text = _report(w, tmp_path, {agent})
    _no_controls(text)
    assert "\\x1b]0;pwned\\x07" in text and "Bash\\u202e" in text and "claude\\x1b" in text
    ran = next(l for l in text.splitlines() if l.strip().startswith("ran    curl"))
    assert "…" in ran and len(ran) < 400
    tool = report["llm_calls"][0]["tool_calls"][0]
    assert [a["argv"] for a in tool["activity"] if a["kind"] == "process"][1] == ["curl", "-s", f"{URL}/{'a' * 300}"]
    assert f"/w/out{evil}.txt" in [a["path"] for a in tool["activity"] if a["kind"] == "file"]
    assert report["llm_calls"][0]["model"] == f"claude{evil}"  # --json: as it was
    # the result went back with the second request, 1.2 s after the response
    assert 1200 <= tool["result"]["duration_ms"] < 1300
    back = next(l for l in text.splitlines() if l.startswith("      ← tool result for Bash"))
    assert back.endswith(": output of toolu_1") and "the tool took 1." in back
    second = report["llm_calls"][1]["input"]
    assert second["kind"] == "tool_results" and second["tool_results"][0]["content"] == "output of toolu_1"


def test_startup_and_roles_are_shown_apart(tmp_path):
    w = World()
    agent = w.start_agent(["agent"])
    git = w.spawn(agent, ["git", "status"])
    w.exit(git)
    command = "ls /w > /w/list.txt"
    w.llm(agent, tools=[("t1", "Bash", {"command": command})])
    shell = w.spawn(agent, ["/bin/bash", "-c", f"eval '{command}' && pwd -P >| /tmp/cwd"])
    w.write(shell, "/w/list.txt")
    ls = w.spawn(shell, ["ls", "/w"])
    w.exit(ls)
    w.write(shell, "/tmp/cwd")
    w.exit(shell)
    w.llm(agent, results=["t1"])
    report, text = _report(w, tmp_path, {agent})
    assert [p["argv"] for p in report["startup"]["processes"]] == [["git", "status"]]
    assert report["unexplained"] == {"processes": [], "files": []}
    assert "Start-up (before the first LLM call)" in text and "ran git status" in text
    assert "          shell  /bin/bash -c" in text
    assert "          write  /w/list.txt" in text
    assert "          wrapper: write  /tmp/cwd" in text
    roles = {(a["kind"], a.get("path") or a["argv"][0]): a["role"]
             for a in report["llm_calls"][0]["tool_calls"][0]["activity"]}
    assert roles == {("process", "/bin/bash"): "shell", ("process", "ls"): "command",
                     ("file", "/w/list.txt"): "command", ("file", "/tmp/cwd"): "wrapper"}


def test_a_session_of_the_previous_schema_still_renders(tmp_path):
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("t1", "Bash", {"command": "ls"})])
    shell = w.spawn(agent, ["/bin/sh", "-c", "ls"])
    w.exit(shell)
    w.llm(agent, results=["t1"])
    path = w.session(str(tmp_path / "old.db"), roots={agent})
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE startup; DROP TABLE tool_results; ALTER TABLE links DROP COLUMN role; "
                     "UPDATE meta SET value = '\"2\"' WHERE key = 'schema';")
    db.commit()
    db.close()
    report = build_report(open_session(path), path)
    text = render_text(report)
    assert report["session"]["incomplete"][0].startswith("recorded by an older agentsight")
    assert report["llm_calls"][0]["tool_calls"][0]["activity"][0]["role"] == "command"
    assert "ran    /bin/sh -c ls" in text
