"""The linker over hand-built sessions: the shapes in which agent CLIs run
a tool's command, quoting, parallel tool calls, file tools, and what no
tool call explains."""
from __future__ import annotations

import pytest

from agent_world import World, file_links, link_of, links, process_links, results, startup, unexplained
from agentsight.analyzers.shell import embedding, match_argv, parse, shell_script
from agentsight.events import Link, ProcessKey, Startup, ToolResult

URL = "https://127.0.0.1:8443/x"


def eval_quote(command: str) -> str:
    return command.replace("'", "'\\''")


def eval_wrapper(command: str) -> list[str]:
    """A snapshot, shell options, the command inside eval '…', then the cwd saved."""
    return ["/bin/bash", "-c",
            "source /home/u/.agent/shell-snapshots/snapshot-bash-123.sh 2>/dev/null || true && "
            "shopt -u extglob 2>/dev/null || true && "
            f"eval '{eval_quote(command)}' < /dev/null && pwd -P >| /tmp/agent-3f2a-cwd"]


def subshell_wrapper(command: str) -> list[str]:
    """Shell options, a bgpids file, the command in a ( trap … EXIT; CMD ) subshell."""
    return ["/usr/bin/bash", "-c",
            "shopt -u promptvars nullglob extglob nocaseglob dotglob; "
            "_bgpids_file=/tmp/agent-shell-Y3az9j/bgpids.tmp\n(\n"
            "  trap 'jobs -p > \"$_bgpids_file\"' EXIT\n"
            f"{command}\n)\n__code=$?\nexit $__code"]


def login_wrapper(command: str) -> list[str]:
    return ["/usr/bin/env", "bash", "-lc", command]


def test_eval_wrapper_links_the_shell_its_commands_and_its_redirects():
    w = World()
    agent = w.start_agent(["node", "/usr/lib/agent/cli.js"])
    command = f"echo hi > /w/out.txt && curl -s {URL} | tee -a /w/log.txt"
    w.llm(agent, tools=[("toolu_1", "Bash", {"command": command, "description": "fetch"})])
    shell = w.spawn(agent, eval_wrapper(command))
    w.read(shell, "/home/u/.agent/shell-snapshots/snapshot-bash-123.sh")
    w.write(shell, "/w/out.txt")
    curl = w.spawn(shell, ["curl", "-s", URL])
    tee = w.spawn(shell, ["tee", "-a", "/w/log.txt"])
    w.write(tee, "/w/log.txt", append=True)
    w.exit(curl)
    w.exit(tee)
    w.write(shell, "/tmp/agent-3f2a-cwd")
    w.exit(shell)
    w.llm(agent, results=["toolu_1"], text="done")
    out = w.correlate(roots={agent})

    procs = process_links(out)
    assert procs[shell].role == "shell"
    assert procs[shell].evidence["arguments"] == (
        "the tool's command (arguments.command) is embedded in this shell's script (inside eval)")
    assert procs[curl].role == "command" and "a command of the tool's command" in procs[curl].evidence["arguments"]
    assert procs[curl].evidence["parent_linked"] == f"started by a linked process (pid {shell})"
    assert procs[tee].role == "command"
    files = file_links(out)
    assert files["write /w/out.txt"].role == "command"
    assert files["write /w/out.txt"].evidence["arguments"].startswith(
        "a redirect target of the tool's command (arguments.command)")
    assert files["write /w/log.txt"].role == "command"  # tee's file: a redirect target too
    cwd = files["write /tmp/agent-3f2a-cwd"]
    assert cwd.role == "wrapper" and "the wrapper's own" in cwd.evidence["wrapper"]
    assert {l.tool_call.id for l in links(out)} == {"toolu_1"}
    assert unexplained(out) == []


@pytest.mark.parametrize("command", [
    "printf '%s\\n' \"it's \\\"quoted\\\" $HOME\" > /w/q.txt",
    "echo 'a'\\''b' > /w/q.txt",  # the model's own '\'' inside the command
    "echo \"$(date +%s)\" > /w/q.txt\necho second line >> /w/q.txt",
    "echo 'tab\there' \\\n  'and a continued line' > /w/q.txt",
    "echo $'\\x41\\n' 'ünïcødé ✓' > /w/q.txt",
    "echo '' \"\" > /w/q.txt; echo 'eval '\\''nested'\\''' >> /w/q.txt",
])
def test_quoting_in_eval_is_undone(command):
    script = parse(eval_wrapper(command)[2])
    assert embedding(script, command) == (3, "inside eval")
    w = World()
    agent = w.start_agent(["node", "cli.js"])
    w.llm(agent, tools=[("toolu_q", "Bash", {"command": command})])
    shell = w.spawn(agent, eval_wrapper(command))
    w.write(shell, "/w/q.txt")
    date = w.spawn(shell, ["date", "+%s"]) if "date" in command else None
    w.exit(shell)
    w.llm(agent, results=["toolu_q"])
    out = w.correlate(roots={agent})
    assert process_links(out)[shell].role == "shell"
    assert file_links(out)["write /w/q.txt"].role == "command"
    assert "redirect target" in file_links(out)["write /w/q.txt"].evidence["arguments"]
    if date:
        assert process_links(out)[date].role == "command"
    assert unexplained(out) == []


def test_subshell_wrapper_with_a_bgpids_file():
    w = World()
    agent = w.start_agent(["codex"])
    command = f"curl -s {URL} > /w/page.html && ls -la /w"
    w.llm(agent, tools=[("call_1", "shell", {"command": command})])
    shell = w.spawn(agent, subshell_wrapper(command))
    sub = w.fork(shell)  # the ( … ) subshell: a fork that never execs
    curl = w.spawn(sub, ["curl", "-s", URL])
    w.write(curl, "/w/page.html")
    w.exit(curl)
    ls = w.spawn(sub, ["ls", "-la", "/w"])
    w.exit(ls)
    w.write(sub, "/tmp/agent-shell-Y3az9j/bgpids.tmp")  # the EXIT trap
    w.exit(sub)
    w.exit(shell)
    w.llm(agent, results=["call_1"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert procs[shell].role == "shell" and "(verbatim)" in procs[shell].evidence["arguments"]
    assert procs[sub].role == "wrapper" and procs[sub].evidence["parent_linked"]
    assert procs[curl].role == "command" and procs[ls].role == "command"
    files = file_links(out)
    assert files["write /w/page.html"].role == "command"
    assert "redirect target" in files["write /w/page.html"].evidence["arguments"]
    bgpids = files["write /tmp/agent-shell-Y3az9j/bgpids.tmp"]
    assert bgpids.role == "wrapper" and bgpids.evidence["process"] == f"written by a linked process (pid {sub})"
    assert unexplained(out) == []


def test_login_shell_through_env_with_its_profile():
    w = World()
    agent = w.start_agent(["gemini"])
    command = f"echo ok > /w/ok.txt && curl -s {URL}"
    w.llm(agent, tools=[("call_1", "run_shell_command", {"command": command})])
    shell = w.spawn(agent, login_wrapper(command))
    env_key = w.key(shell)
    bash_key = w.exec(shell, ["bash", "-lc", command], ppid=agent)  # env execs bash: the same process
    w.read(shell, "/etc/profile")
    idu = w.spawn(shell, ["id", "-u"])  # /etc/profile's $(id -u)
    w.exit(idu)
    w.write(shell, "/w/ok.txt")
    curl_key = w.exec(shell, ["curl", "-s", URL], ppid=agent)  # bash execs the last command in its place
    w.exit(shell)
    w.llm(agent, results=["call_1"])
    out = w.correlate(roots={agent})
    env_link = link_of(out, env_key)
    assert env_link.role == "shell" and env_link.evidence["arguments"] == "argv is arguments.command"
    bash = link_of(out, bash_key)
    assert bash.role == "shell" and bash.evidence["arguments"] == "argv is arguments.command"
    curl = link_of(out, curl_key)
    assert curl.role == "command" and curl.evidence["parent_linked"].startswith("exec'd by a linked process")
    profile = process_links(out)[idu]
    assert profile.role == "wrapper"  # a login shell's profile is the wrapper's, not the command's
    assert file_links(out)["write /w/ok.txt"].role == "command"
    assert unexplained(out) == []


def test_env_prefixes_and_runners():
    w = World()
    agent = w.start_agent(["agent"])
    command = f"FOO=1 timeout 10 nice -n 5 curl -s {URL} && sudo -u bob env A=b ls /srv && " \
              "find . -name '*.py' | xargs grep -l TODO"
    w.llm(agent, tools=[("t1", "bash", {"command": command})])
    shell = w.spawn(agent, ["bash", "-c", command])
    timeout = w.spawn(shell, ["timeout", "10", "nice", "-n", "5", "curl", "-s", URL])
    nice = w.spawn(timeout, ["nice", "-n", "5", "curl", "-s", URL])
    w.exec(nice, ["curl", "-s", URL])
    sudo = w.spawn(shell, ["sudo", "-u", "bob", "env", "A=b", "ls", "/srv"])
    ls = w.spawn(sudo, ["ls", "/srv"])
    find = w.spawn(shell, ["find", ".", "-name", "*.py"])
    xargs = w.spawn(shell, ["xargs", "grep", "-l", "TODO"])
    grep = w.spawn(xargs, ["grep", "-l", "TODO", "./a.py", "./b/c.py"])
    for pid in (nice, timeout, ls, sudo, find, grep, xargs, shell):
        w.exit(pid)
    w.llm(agent, results=["t1"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert procs[shell].evidence["arguments"] == "argv is arguments.command" and procs[shell].role == "shell"
    for pid in (timeout, ls, sudo, find, xargs, grep):
        assert procs[pid].role == "command", procs[pid]
        assert "a command of the tool's command" in procs[pid].evidence["arguments"], procs[pid]
    curl = link_of(out, w.key(nice))
    assert curl.role == "command" and "curl -s" in curl.evidence["arguments"]
    assert unexplained(out) == []


def test_substitutions_subshells_and_lists():
    w = World()
    agent = w.start_agent(["agent"])
    command = "echo \"rev $(git rev-parse HEAD)\" > /w/rev.txt; (cd /w && make -j2) || { rm -f /w/x; true; }"
    w.llm(agent, tools=[("t1", "bash", {"command": command})])
    shell = w.spawn(agent, eval_wrapper(command))
    cs = w.fork(shell)  # $( … )
    git = w.spawn(cs, ["git", "rev-parse", "HEAD"])
    w.exit(git)
    w.exit(cs)
    w.write(shell, "/w/rev.txt")
    sub = w.fork(shell)
    make = w.spawn(sub, ["make", "-j2"])
    cc = w.spawn(make, ["cc", "-c", "a.c"])
    w.write(cc, "/w/a.o")
    rm = w.spawn(shell, ["rm", "-f", "/w/x"])
    w.unlink(rm, "/w/x")
    for pid in (cc, make, sub, rm, shell):
        w.exit(pid)
    w.llm(agent, results=["t1"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert procs[git].role == "command" and "git rev-parse HEAD" in procs[git].evidence["arguments"]
    assert procs[make].role == "command"
    assert procs[cc].role == "command"  # started by a command of the tool's command
    files = file_links(out)
    assert files["write /w/rev.txt"].role == "command"
    assert files["write /w/a.o"].role == "command"
    assert files["unlink /w/x"].role == "command" and "a path in the tool's command" in \
        files["unlink /w/x"].evidence["arguments"]
    assert unexplained(out) == []


def test_parallel_tool_calls_each_get_their_own():
    w = World()
    agent = w.start_agent(["node", "cli.js"])
    c0 = "ls /w"
    c1 = "ls /w > /w/list.txt"
    w.llm(agent, tools=[("t0", "Bash", {"command": c0}), ("t1", "Bash", {"command": c1}),
                        ("t2", "Write", {"file_path": "/w/notes.md", "content": "x"}),
                        ("t3", "Edit", {"path": "src/b.py", "old_string": "a", "new_string": "b"})])
    s1 = w.spawn(agent, eval_wrapper(c1))
    s0 = w.spawn(agent, eval_wrapper(c0))
    ls1 = w.spawn(s1, ["ls", "/w"])
    ls0 = w.spawn(s0, ["ls", "/w"])
    w.write(agent, "/w/notes.md.tmp.77.1")
    w.write(s1, "/w/list.txt")
    w.write(agent, "/w/src/b.py")
    w.rename(agent, "/w/notes.md.tmp.77.1", "/w/notes.md")
    w.write(s0, "/tmp/agent-3f2a-cwd")
    w.write(s1, "/tmp/agent-3f2a-cwd")
    for pid in (ls0, ls1, s0, s1):
        w.exit(pid)
    w.llm(agent, results=["t0", "t1", "t2", "t3"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert (procs[s0].tool_call.id, procs[ls0].tool_call.id) == ("t0", "t0")
    assert (procs[s1].tool_call.id, procs[ls1].tool_call.id) == ("t1", "t1")
    by_file: dict[tuple[int, str, str], Link] = {(l.target.pid, l.target.op, l.target.path): l
                                                 for l in links(out) if not isinstance(l.target, ProcessKey)}
    assert by_file[(s1, "write", "/w/list.txt")].tool_call.id == "t1"
    assert by_file[(s0, "write", "/tmp/agent-3f2a-cwd")].tool_call.id == "t0"
    assert by_file[(s1, "write", "/tmp/agent-3f2a-cwd")].tool_call.id == "t1"
    assert by_file[(agent, "write", "/w/notes.md.tmp.77.1")].tool_call.id == "t2"
    assert by_file[(agent, "write", "/w/notes.md.tmp.77.1")].evidence["arguments"] == (
        f"a temporary file pid {agent} renamed over /w/notes.md (path is arguments.file_path)")
    assert by_file[(agent, "rename", "/w/notes.md.tmp.77.1")].tool_call.id == "t2"
    assert by_file[(agent, "write", "/w/src/b.py")].tool_call.id == "t3"
    assert by_file[(agent, "write", "/w/src/b.py")].evidence["arguments"] == "path is arguments.path"
    # each process and file exactly once
    targets = [l.target for l in links(out)]
    assert len(targets) == len(set(targets))
    assert unexplained(out) == []


def test_parallel_subshell_wrappers_when_one_command_holds_the_other():
    w = World()
    agent = w.start_agent(["codex"])
    short, long = f"curl -s {URL}", f"curl -s {URL} -o /w/page.html"
    w.llm(agent, tools=[("a", "shell", {"command": short}), ("b", "shell", {"command": long})])
    s_long = w.spawn(agent, subshell_wrapper(long))
    s_short = w.spawn(agent, subshell_wrapper(short))
    c_short = w.spawn(s_short, ["curl", "-s", URL])
    c_long = w.spawn(s_long, ["curl", "-s", URL, "-o", "/w/page.html"])
    w.write(c_long, "/w/page.html")
    for pid in (c_short, c_long, s_short, s_long):
        w.exit(pid)
    w.llm(agent, results=["a", "b"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert {pid: procs[pid].tool_call.id for pid in (s_short, c_short, s_long, c_long)} == \
        {s_short: "a", c_short: "a", s_long: "b", c_long: "b"}
    assert file_links(out)["write /w/page.html"].tool_call.id == "b"


def test_parallel_calls_of_the_same_command_get_one_shell_each():
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("a", "bash", {"command": "date"}), ("b", "bash", {"command": "date"})])
    s0 = w.spawn(agent, ["/bin/sh", "-c", "date"])
    s1 = w.spawn(agent, eval_wrapper("date"))
    d1 = w.spawn(s1, ["date"])
    w.exit(s0)
    w.exit(d1)
    w.exit(s1)
    w.llm(agent, results=["a", "b"])
    procs = process_links(w.correlate(roots={agent}))
    assert {procs[s0].tool_call.id, procs[s1].tool_call.id} == {"a", "b"}
    assert procs[d1].tool_call.id == procs[s1].tool_call.id


def test_file_tools_by_path_rename_target_and_patches():
    w = World()
    agent = w.start_agent(["node", "cli.js"])
    patch = ("*** Begin Patch\n*** Update File: src/c.py\n@@\n-x\n+y\n*** Add File: docs/new.md\n+hi\n"
             "*** Delete File: old.txt\n*** End Patch\n")
    diff = "--- a/lib/d.py\n+++ b/lib/d.py\n@@ -1 +1 @@\n-a\n+b\n"
    w.llm(agent, tools=[("w1", "Write", {"file_path": "/w/a.py", "content": "print()"}),
                        ("w2", "apply_patch", {"input": patch}),
                        ("w3", "str_replace_editor", {"command": "create", "absolute_path": "/w/e.txt"}),
                        ("w4", "edit_file", {"filename": "f.txt", "diff": diff})])
    w.write(agent, "/w/.a.py.tmp-9")
    w.rename(agent, "/w/.a.py.tmp-9", "/w/a.py")
    w.write(agent, "/w/src/c.py")
    w.write(agent, "/w/docs/new.md")
    w.unlink(agent, "/w/old.txt")
    w.write(agent, "/w/e.txt")
    w.write(agent, "/w/lib/d.py")
    w.write(agent, "/w/f.txt")
    w.write(agent, "/home/u/.agent/history.jsonl")  # the agent's own: neither linked nor flagged
    w.llm(agent, results=["w1", "w2", "w3", "w4"])
    out = w.correlate(roots={agent})
    files = file_links(out)
    assert files["write /w/.a.py.tmp-9"].tool_call.id == "w1"
    assert files["rename /w/.a.py.tmp-9"].tool_call.id == "w1"
    assert files["rename /w/.a.py.tmp-9"].evidence["arguments"] == "rename target is arguments.file_path"
    assert files["rename /w/.a.py.tmp-9"].evidence["process"] == (
        f"by the agent itself (pid {agent}), which made the LLM call")
    for name in ("write /w/src/c.py", "write /w/docs/new.md", "unlink /w/old.txt"):
        assert files[name].tool_call.id == "w2"
        assert files[name].evidence["arguments"] == "path is arguments.input (a file the patch changes)"
    assert files["write /w/e.txt"].tool_call.id == "w3"
    assert files["write /w/lib/d.py"].tool_call.id == "w4"
    assert files["write /w/f.txt"].tool_call.id == "w4"
    assert "write /home/u/.agent/history.jsonl" not in files
    assert all(l.role == "command" for l in links(out))
    assert unexplained(out) == []


def test_apply_patch_through_a_shell_heredoc():
    w = World()
    agent = w.start_agent(["codex"])
    command = "apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: src/m.rs\n@@\n-a\n+b\n*** End Patch\nEOF"
    w.llm(agent, tools=[("c1", "shell", {"command": ["bash", "-lc", command]})])
    shell = w.spawn(agent, ["bash", "-lc", command])
    w.exec(shell, ["apply_patch"])
    w.write(shell, "/w/src/m.rs")
    w.exit(shell)
    w.llm(agent, results=["c1"])
    out = w.correlate(roots={agent})
    assert process_links(out)[shell].role == "command"
    assert file_links(out)["write /w/src/m.rs"].tool_call.id == "c1"
    assert unexplained(out) == []


def test_a_persistent_shell_and_a_script_file():
    """Agents that type commands into a long-lived shell, or write them to a
    script and run that: the commands, their redirects and the script's
    shell are still the tool call's."""
    w = World()
    agent = w.start_agent(["agent"])
    persistent = w.spawn(agent, ["/bin/bash", "--norc"])  # start-up
    w.llm(agent, tools=[("t1", "bash", {"command": "ls /w > /w/l.txt"})])
    w.write(persistent, "/w/l.txt")
    ls = w.spawn(persistent, ["ls", "/w"])
    w.exit(ls)
    w.llm(agent, results=["t1"], tools=[("t2", "bash", {"command": "curl -s https://x/y > /w/o"})])
    w.write(agent, "/tmp/cmd-1.sh")
    script = w.spawn(agent, ["/bin/bash", "/tmp/cmd-1.sh"])
    w.write(script, "/w/o")
    curl = w.spawn(script, ["curl", "-s", "https://x/y"])
    w.exit(curl)
    w.exit(script)
    w.llm(agent, results=["t2"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert [s.target.pid for s in startup(out)] == [persistent]
    assert procs[ls].tool_call.id == "t1"
    assert file_links(out)["write /w/l.txt"].tool_call.id == "t1"
    assert procs[script].tool_call.id == "t2" and procs[script].role == "shell"
    assert procs[script].evidence["arguments"].startswith(
        f"runs /tmp/cmd-1.sh, a script the agent (pid {agent}) wrote after the response")
    assert procs[curl].tool_call.id == "t2" and procs[curl].role == "command"
    assert file_links(out)["write /w/o"].role == "command"
    assert unexplained(out) == []


def test_a_command_no_tool_call_explains_is_flagged():
    w = World()
    agent = w.start_agent(["agent"])
    command = "ls /w"
    w.llm(agent, tools=[("t1", "bash", {"command": command})])
    shell = w.spawn(agent, eval_wrapper(command))
    ls = w.spawn(shell, ["ls", "/w"])
    rogue = w.spawn(agent, ["curl", "-s", "https://127.0.0.1:9/exfiltrate"])  # the agent's own, mid-tool
    other = w.spawn(agent, ["/bin/bash", "-c", "curl -s https://127.0.0.1:9/x > /tmp/loot"])  # a shell, not ours
    child = w.spawn(other, ["curl", "-s", "https://127.0.0.1:9/x"])
    w.write(other, "/tmp/loot")
    for pid in (ls, shell, rogue, child, other):
        w.exit(pid)
    w.llm(agent, results=["t1"], text="done")
    w.tick(5000)
    late = w.spawn(agent, ["curl", "-s", "https://127.0.0.1:9/after"])  # after the last answer
    w.exit(late)
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert set(procs) == {shell, ls}
    flagged = {(u.target.pid, u.target_kind) for u in unexplained(out)}
    assert flagged == {(rogue, "process"), (other, "process"), (child, "process"), (other, "file"),
                       (late, "process")}
    assert all(u.reason == "no tool call explains it" for u in unexplained(out))


def test_startup_is_decided_when_the_first_call_arrives():
    w = World()
    agent = w.start_agent(["node", "cli.js"])
    git = w.spawn(agent, ["git", "status", "--porcelain"])
    w.exit(git)
    rg = w.spawn(agent, ["rg", "--files"])
    w.write(rg, "/w/.cache/rg")
    w.exit(rg)
    first = w.llm(agent, tools=[("t1", "bash", {"command": "ls"})])
    steps = w.steps(roots={agent})
    at_first = next(out for ev, out in steps if ev is first)
    assert {(s.target.pid, s.target_kind) for s in at_first if isinstance(s, Startup)} == \
        {(git, "process"), (rg, "process"), (rg, "file")}
    assert all(not isinstance(e, Startup) for ev, out in steps if ev is not first for e in out)
    assert not any(unexplained(out) for _, out in steps)


def test_startup_is_told_before_any_call_arrives_from_the_first_tls_write():
    from agentsight.events import TlsData

    w = World()
    agent = w.start_agent(["node", "cli.js"])
    git = w.spawn(agent, ["git", "rev-parse", "HEAD"])
    w.exit(git)
    w.tick(10)
    send = TlsData(w.tick(), agent, agent, "node", 1000, fn="SSL_write", dir="send", conn=7, len=5, data=b"POST ")
    w.events.append(send)
    w.tick(4000)  # the model takes its time: events of 4 s later arrive meanwhile
    w.events.append(TlsData(w.tick(), agent, agent, "node", 1000, fn="SSL_read", dir="recv", conn=7, len=1,
                            data=b"x"))
    steps = w.steps(roots={agent})
    emitted = [(ev, out) for ev, out in steps if ev is not None and startup(out)]
    assert [(type(ev).__name__, [s.target.pid for s in startup(out)]) for ev, out in emitted] == [("TlsData", [git])]


def test_links_are_emitted_when_the_result_goes_back_not_at_the_end():
    w = World()
    agent = w.start_agent(["agent"])
    first = w.llm(agent, tools=[("t1", "bash", {"command": f"curl -s {URL}"})])
    shell = w.spawn(agent, ["/bin/sh", "-c", f"curl -s {URL}"])
    curl = w.spawn(shell, ["curl", "-s", URL])
    w.exit(curl)
    w.exit(shell)
    side = w.llm(agent, request={"model": "haiku", "max_tokens": 5, "messages": [
        {"role": "user", "content": "a title for this chat"}]}, append=False)  # a side call: no result in it
    w.tick(10)
    second = w.llm(agent, results=["t1"], tools=[("t2", "bash", {"command": "sleep 100"})])
    sleeper = w.spawn(agent, ["/bin/sh", "-c", "sleep 100"])
    steps = w.steps(roots={agent})
    emitted = {id(ev): out for ev, out in steps if ev is not None}
    assert links(emitted[id(side)]) == []  # a side call does not end the tool call
    at_second = emitted[id(second)]
    assert {l.target.pid for l in links(at_second)} == {shell, curl}
    (result,) = results(at_second)
    assert result.tool_call.id == "t1" and result.ts == second.started_ns
    assert result.duration_ns == second.started_ns - first.ended_ns
    assert result.where == "messages[2].content[0]"
    # A recording killed now (no close()) has those links, not the still-running tool's.
    before_close = [e for ev, out in steps if ev is not None for e in out]
    assert sleeper not in {l.target.pid for l in links(before_close)}
    assert sleeper in {l.target.pid for l in links(steps[-1][1])}


def test_the_agent_exiting_ends_its_tool_calls():
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("t1", "bash", {"command": "make"})])
    shell = w.spawn(agent, ["/bin/sh", "-c", "make"])
    w.exit(shell)
    w.tick(4000)
    w.exit(agent)
    steps = w.steps(roots={agent})
    assert {l.target.pid for l in links(steps[-2][1])} == {shell}  # at the agent's exit


def test_process_events_that_arrive_before_the_llm_call_that_asked_for_them():
    """The TLS ring is read after the process ring: the shell's exec can
    come before the LLM call whose response it follows."""
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("t1", "bash", {"command": "true"})])
    w.llm(agent, results=["t1"], tools=[("t2", "bash", {"command": "uname -a"})])
    shell = w.spawn(agent, ["/bin/sh", "-c", "uname -a"])
    w.exit(shell)
    w.llm(agent, results=["t2"])
    events = list(w.events)
    call2 = [e for e in events if type(e).__name__ == "LlmCall"][1]
    events.remove(call2)
    events.insert(events.index(next(e for e in events if getattr(e, "argv", None) == ["/bin/sh", "-c",
                                                                                        "uname -a"])) + 1, call2)
    out = w.correlate(roots={agent}, events=events)
    assert process_links(out)[shell].tool_call.id == "t2"
    assert unexplained(out) == []


def test_a_background_process_stays_with_the_tool_call_that_started_it():
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("t1", "bash", {"command": "nohup ./watch.sh > /dev/null 2>&1 &"})])
    shell = w.spawn(agent, ["/bin/bash", "-c", "nohup ./watch.sh > /dev/null 2>&1 &"])
    watcher = w.spawn(shell, ["/bin/bash", "./watch.sh"])
    w.exit(shell)
    w.llm(agent, results=["t1"], tools=[("t2", "bash", {"command": "make test"})])
    shell2 = w.spawn(agent, ["/bin/bash", "-c", "make test"])
    rebuild = w.spawn(watcher, ["make"])  # the watcher, while the second tool runs
    test = w.spawn(shell2, ["make", "test"])
    for pid in (rebuild, test, shell2):
        w.exit(pid)
    w.llm(agent, results=["t2"])
    procs = process_links(w.correlate(roots={agent}))
    assert procs[watcher].tool_call.id == "t1"
    assert "a command of the tool's command" in procs[watcher].evidence["arguments"]
    assert procs[rebuild].tool_call.id == "t1"
    assert (procs[shell2].tool_call.id, procs[test].tool_call.id) == ("t2", "t2")


@pytest.mark.parametrize("api,provider,request_of", [
    ("chat.completions", "openai", lambda ids: {"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": i, "type": "function"} for i in ids]},
        *[{"role": "tool", "tool_call_id": i, "content": "ok"} for i in ids]]}),
    ("responses", "openai", lambda ids: {"model": "m", "input": [
        {"role": "user", "content": "go"}, *[{"type": "function_call", "call_id": i} for i in ids],
        *[{"type": "function_call_output", "call_id": i, "output": "ok"} for i in ids]]}),
    ("generateContent", "gemini", lambda ids: {"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "run", "args": {}}} for _ in ids]},
        {"role": "user", "parts": [{"functionResponse": {"name": "run", "response": {"output": "ok"}}}
                                   for _ in ids]}]}),
    ("messages", "unknown", lambda ids: {"messages": [
        {"role": "user", "content": "go"}, {"role": "assistant", "content": []},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "ok", "is_error": True}
                                     for i in ids]}], "max_tokens": 5}),
])
def test_tool_results_of_each_api(api, provider, request_of):
    w = World(api=api, provider=provider)
    agent = w.start_agent(["agent"])
    ids = [None, None] if provider == "gemini" else ["c1", "c2"]
    first = w.llm(agent, tools=[(ids[0], "run", {"command": "ls"}), (ids[1], "run", {"command": "pwd"})],
                  request={"model": "m", "messages": [{"role": "user", "content": "go"}], "contents": [],
                           "input": "go", "max_tokens": 5})
    s1 = w.spawn(agent, ["/bin/sh", "-c", "ls"])
    s2 = w.spawn(agent, ["/bin/sh", "-c", "pwd"])
    w.exit(s1)
    w.exit(s2)
    second = w.llm(agent, request=request_of(ids))
    steps = w.steps(roots={agent})
    at_second = next(out for ev, out in steps if ev is second)
    got = results(at_second)
    assert [r.tool_call.index for r in got] == [0, 1]
    assert all(r.ts == second.started_ns and r.duration_ns == second.started_ns - first.ended_ns for r in got)
    assert all(r.size == 2 for r in got)
    if provider == "unknown":
        assert all(r.is_error is True for r in got)
    assert {l.target.pid: l.tool_call.index for l in links(at_second)} == {s1: 0, s2: 1}


def test_shell_helpers():
    assert shell_script(["bash", "-lc", "x"]) == ("x", True)
    assert shell_script(["/bin/sh", "-e", "-c", "x", "arg0"]) == ("x", False)
    assert shell_script(["bash", "script.sh"]) is None
    grep = parse("find . | xargs grep -l foo").commands[1].forms[-1]
    assert match_argv(grep, ["grep", "-l", "foo", "a.py"]) == 2
    assert match_argv(parse("./build.sh --fast").commands[0].words, ["/bin/bash", "./build.sh", "--fast"]) == 3
    assert match_argv(parse("curl -s \"$U/x\"").commands[0].words, ["curl", "-s", "https://h/x"]) == 3
    assert match_argv(parse("curl -s x").commands[0].words, ["wget", "x"]) == 0
    assert embedding(parse("echo false"), "ls") is None
    assert embedding(parse("ls -la && pwd"), "ls -la") == (2, "verbatim")
    tree = parse("cat <<'EOF' > f.txt\nhello\nEOF\nsudo -u x timeout 5 curl y | tee -a log 2>&1")
    assert [(r.op, r.target.literal) for r in tree.redirects] == [(">", "f.txt"), ("tee -a", "log")]
    assert [w.show() for w in tree.commands[1].forms[-1]] == ["curl", "y"]
    assert parse("echo \"unterminated").errors


def test_evidence_quotes_no_secret():
    w = World()
    agent = w.start_agent(["agent"])
    secret = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345"
    command = f"curl -s -H 'x-api-key: {secret}' {URL}"
    w.llm(agent, tools=[("t1", "bash", {"command": command})])
    shell = w.spawn(agent, eval_wrapper(command))
    curl = w.spawn(shell, ["curl", "-s", "-H", f"x-api-key: {secret}", URL])
    w.exit(curl)
    w.exit(shell)
    w.llm(agent, results=["t1"])
    out = w.correlate(roots={agent})
    why = process_links(out)[curl].evidence["arguments"]
    assert "a command of the tool's command" in why and secret not in why and "[REDACTED]" in why


@pytest.mark.parametrize("argv", [
    ["/bin/bash", "-c", 'eval "$AGENT_CMD"'],  # the command in an environment variable
    ["/bin/bash", "-s"],  # on stdin
    ["/bin/bash", "-c", 'eval "$(echo bHMgL3cgPiAvdy9sLnR4dA== | base64 -d)"'],  # encoded
])
def test_a_shell_that_does_not_show_the_command_is_known_by_its_children(argv):
    w = World()
    agent = w.start_agent(["agent"])
    w.llm(agent, tools=[("t1", "bash", {"command": "ls /w > /w/l.txt"})])
    shell = w.spawn(agent, argv)
    helper = w.spawn(shell, ["base64", "-d"]) if "base64" in argv[-1] else None
    w.write(shell, "/w/l.txt")
    ls = w.spawn(shell, ["ls", "/w"])
    w.exit(ls)
    w.exit(shell)
    w.llm(agent, results=["t1"])
    out = w.correlate(roots={agent})
    procs = process_links(out)
    assert procs[shell].role == "shell" and procs[shell].evidence["arguments"].startswith(
        f"its child pid {ls} runs `ls /w`, a command of the tool's command (arguments.command)")
    assert procs[ls].role == "command"
    if helper:
        assert procs[helper].role == "wrapper"
    assert file_links(out)["write /w/l.txt"].role == "command"
    assert unexplained(out) == []
