"""The web UI in a real browser: Debian's Chromium driven by Playwright,
showing sessions recorded from a real agent against the local LLM mock,
and a recording as it happens (`record --serve`).

Screenshots go to $AGENTSIGHT_TEST_ARTIFACTS (default
/var/cache/agentsight-test/artifacts), outside the checkout."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from llm_mock import LLMMock, Script
from agentsight.ui.text import printable
from support import REPO
from web_support import build_session

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("AGENTSIGHT_TEST_ARTIFACTS", "/var/cache/agentsight-test/artifacts"))

# An agent: asks the model, runs the tool command it gets back in a shell,
# sends the result, prints the answer. Its script (`plan`) says what to ask.
AGENT = textwrap.dedent("""
    import json, ssl, subprocess, sys, time, urllib.request
    base, ca, plan = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
    ctx = ssl.create_default_context(cafile=ca)

    def ask(messages):
        body = json.dumps({"model": plan["model"], "max_tokens": 100, "system": plan["system"],
                           "tools": plan.get("tools", []), "messages": messages}).encode()
        req = urllib.request.Request(base + "/v1/messages", data=body, headers={
            "content-type": "application/json", "x-api-key": "sk-ant-api03-webtest0123456789abcdef",
            "anthropic-version": "2023-06-01"})
        with urllib.request.urlopen(req, context=ctx) as r:
            answer = json.load(r)
        with open(plan["times"], "a") as f:
            f.write(f"{time.time()}\\n")
        return answer

    if plan.get("wait_for"):
        while not __import__("os").path.exists(plan["wait_for"]):
            time.sleep(0.02)
    messages = [{"role": "user", "content": plan["ask"]}]
    for turn in range(plan["turns"]):
        if turn:
            time.sleep(plan.get("pause", 0))
        answer = ask(messages)
        messages.append({"role": "assistant", "content": answer["content"]})
        tools = [b for b in answer["content"] if b["type"] == "tool_use"]
        if not tools:
            break
        out = subprocess.run(tools[0]["input"]["command"], shell=True, capture_output=True, text=True)
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tools[0]["id"],
                                                      "content": out.stdout}]})
    print(answer["content"][0]["text"])
    """)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A page, with everything that would mean script ran that should not have."""

    def __init__(self, page: Page):
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    watched = Watched(context.new_page())
    yield watched
    context.close()


@pytest.fixture
def mock():
    with LLMMock() as m:
        yield m


def screenshot(page: Page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    print(f"\nscreenshot: {path}")
    return path


def _plan(directory: Path, **values) -> Path:
    plan = {"model": "claude-web", "system": "You are a careful agent.", "turns": 2,
            "times": str(directory / "times.txt"), **values}
    path = directory / "plan.json"
    path.write_text(json.dumps(plan))
    (directory / "agent.py").write_text(AGENT)
    return path


def _record(mock: LLMMock, directory: Path, session: Path, plan: Path) -> subprocess.CompletedProcess:
    ca = directory / "ca.pem"
    ca.write_bytes(Path(mock.ca_file).read_bytes())
    result = subprocess.run([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             sys.executable, str(directory / "agent.py"), mock.base_url, str(ca), str(plan)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


class Serving:
    """`python -m agentsight serve FILES --port 0`, stopped with Ctrl-C."""

    def __init__(self, *sessions: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "agentsight", "serve", *map(str, sessions), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + self.proc.stderr.read()
        self.url = line.split(" at ", 1)[1].split()[0]

    def stop(self) -> str:
        self.proc.send_signal(2)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def serve():
    started: list[Serving] = []

    def start(*sessions: Path) -> Serving:
        s = Serving(*sessions)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def _tool_group(page: Page, command: str):
    return page.locator(".tool-group").filter(has=page.locator(".row.tool .command", has_text=command))


@pytest.mark.bpf
def test_a_recorded_agent_in_the_browser(page, mock, serve, tmp_path):
    note = tmp_path / "note.txt"
    command = f"echo recorded > {note} && ls /"
    mock.queue = [Script(text="I will save the note.", tool_name="bash", tool_args={"command": command},
                         tool_id="toolu_web_1"),
                  Script(text="The note is saved.")]
    plan = _plan(tmp_path, ask="please save a note", tools=[
        {"name": "bash", "description": "Run a shell command", "input_schema": {"type": "object"}}])
    session = tmp_path / "session.db"
    _record(mock, tmp_path, session, plan)
    server = serve(session)
    p = page.page
    p.goto(server.url)
    assert "token=" not in p.url  # it went into a cookie

    calls = p.locator(".row.llm")
    expect(calls).to_have_count(2)
    expect(calls.first.locator(".model")).to_have_text("claude-web")
    expect(calls.first).to_contain_text("12 in / 7 out")
    tool = _tool_group(p, command)
    expect(tool.locator(".row.tool .tool-name")).to_have_text("bash")
    shell = tool.locator(".row.process", has_text=f"/bin/sh -c 'echo recorded > {note} && ls /'")
    expect(shell).to_be_visible()
    expect(shell.locator(".evidence")).to_contain_text("argv is arguments.command")
    expect(shell.locator(".badge.role")).to_have_text("shell")  # the shell that ran the tool's command
    expect(tool.locator(".row.tool")).to_contain_text("result back after")
    expect(tool.locator(".row.process", has_text="ls /").last).to_be_visible()
    written = tool.locator(".row.file", has_text=str(note))
    expect(written).to_be_visible()
    expect(written.locator(".badge")).to_have_text("write")
    # The chart holds the same: both calls, the shell, the file change.
    expect(p.locator(".lane-llm .bar")).to_have_count(2)
    expect(p.locator(f'.lane-file .bar[data-id="{written.get_attribute("data-id")}"]')).to_have_count(1)
    screenshot(p, "timeline.png")

    # The process tree: the agent, and under it the shell; selecting the shell
    # highlights it, what it ran and wrote, and the tool call it belongs to.
    node = p.locator(".node .node-label", has_text="/bin/sh -c").first
    expect(node).to_be_visible()
    node.click()
    shell_id = shell.get_attribute("data-id")
    expect(p.locator(f'.row.process[data-id="{shell_id}"]')).to_have_class(
        re.compile(r"\bselected\b"))
    expect(written).to_have_class(re.compile(r"\bhl\b"))
    expect(tool.locator(".row.tool")).to_have_class(re.compile(r"\bhl-tool\b"))
    expect(p.locator(f'.lane-process .bar[data-id="{shell_id}"]')).to_have_class(
        re.compile(r"\bselected\b"))
    expect(p.locator('.lane-tool .bar.hl-tool')).to_have_count(1)
    expect(p.locator("#detail-pane")).to_contain_text(f"echo recorded > {note} && ls /")
    expect(p.locator("#detail-pane .tool-link")).to_contain_text("bash")
    # Others are not highlighted.
    second = calls.nth(1)
    assert "hl" not in (second.get_attribute("class") or "").split()
    screenshot(p, "timeline-selected.png")
    # Only that process and what it started.
    p.locator("#detail-pane button", has_text="only this process").click()
    expect(calls).to_have_count(0)
    expect(p.locator("#list .row.process")).to_have_count(2)  # the shell and its ls
    expect(p.locator("#list .row.file")).to_have_count(1)
    p.locator("#proc-filter button").click()
    expect(calls).to_have_count(2)

    calls.first.click()
    call = p.locator("#call")
    expect(call.locator(".msg.user").first).to_contain_text("please save a note")
    expect(call.locator(".system")).to_contain_text("You are a careful agent.")
    expect(call.locator(".tools-offered summary")).to_have_text("1 tools offered: bash")
    expect(call.locator("pre.response-text")).to_have_text("I will save the note.")
    expect(call.locator(".tool-call")).to_contain_text(command)
    expect(call.locator(".tool-call .row.file")).to_contain_text(str(note))
    expect(call.locator(".tool-call")).to_contain_text("result back after")
    expect(call.locator("table.headers").first).to_contain_text("[REDACTED]")
    assert "webtest0123456789" not in p.content()
    screenshot(p, "call.png", full_page=True)
    # The second call's conversation carries the tool's result back.
    p.go_back()
    calls.nth(1).click()
    expect(call.locator(".msg.user .tool-result")).to_be_visible()
    expect(call.locator("pre.response-text")).to_have_text("The note is saved.")
    assert not page.errors and not page.dialogs, (page.errors, page.dialogs)
    assert not [m for m in page.console if m.startswith("error")], page.console
    server.stop()


INJECTION = "<img src=x onerror=\"alert('img')\"><script>alert('script')</script>"
# Text that would mislead a reader: a bidi override and a terminal escape.
MISLEADING = "\u202etxt.exe\x1b[2J"


@pytest.mark.bpf
def test_what_the_agent_and_the_model_write_is_shown_as_text(page, mock, serve, tmp_path):
    note = tmp_path / "note.txt"
    command = f"echo '{INJECTION}{MISLEADING}' > {note}"
    mock.queue = [Script(text="Done: " + INJECTION, tool_name="bash", tool_args={"command": command}),
                  Script(text=INJECTION)]
    plan = _plan(tmp_path, ask="say " + INJECTION, system=INJECTION, model="m<b>odel")
    session = tmp_path / "session.db"
    _record(mock, tmp_path, session, plan)
    server = serve(session)
    p = page.page
    p.goto(server.url)
    tool = _tool_group(p, "<img src=x")
    expect(tool.locator(".row.tool .command")).to_have_text(printable(command, keep="\n\t"))
    expect(tool.locator(".row.tool .command")).to_contain_text("\\u202etxt.exe\\x1b[2J")
    # Rows off screen are not laid out (content-visibility), so the whole text, not what is rendered.
    everything = p.evaluate("() => document.body.textContent")
    assert "\u202e" not in everything and "\x1b" not in everything
    shell = tool.locator(".row.process").first
    expect(shell).to_contain_text("<img src=x onerror=")
    expect(shell).to_contain_text("<script>alert(")
    expect(p.locator(".row.llm .snippet").first).to_have_text("Done: " + INJECTION)
    expect(p.locator(".row.llm .model").first).to_have_text("m<b>odel")
    expect(p.locator("#tree .node-label", has_text="<script>").first).to_be_visible()
    p.locator(".row.llm").first.click()
    call = p.locator("#call")
    expect(call.locator("pre.response-text")).to_have_text("Done: " + INJECTION)
    expect(call.locator(".msg.user").first).to_contain_text("say " + INJECTION)
    expect(call.locator(".system")).to_contain_text(INJECTION)
    time.sleep(0.5)  # an image that failed to load would have fired by now
    # Nothing of it became markup: no image, no script beyond the app's own, no bold.
    assert p.locator("img").count() == 0 and p.locator("b", has_text="odel").count() == 0
    assert p.evaluate("() => [...document.scripts].map(s => s.src)") == [server.url.split("?")[0] + "static/app.js"]
    assert not page.dialogs and not page.errors, (page.dialogs, page.errors)
    # And the policy would stop an inline script even if one got in.
    ran = p.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                               document.body.append(s); return window.__ran === 1; }""")
    assert ran is False
    deadline = time.monotonic() + 10  # the browser reports the refusal on its own time
    while not any("Content Security Policy" in m for m in page.console) and time.monotonic() < deadline:
        p.wait_for_timeout(50)
    assert any("Content Security Policy" in m for m in page.console), page.console
    server.stop()


@pytest.mark.bpf
def test_record_serve_shows_each_call_within_a_second(page, mock, tmp_path):
    go = tmp_path / "go"
    note = tmp_path / "live-note.txt"
    command = f"echo live > {note}"
    mock.queue = [Script(text="first", tool_name="bash", tool_args={"command": command}, tool_id="toolu_live"),
                  Script(text="second", tool_name="bash", tool_args={"command": "true"}), Script(text="third")]
    plan = _plan(tmp_path, ask="three calls", turns=3, pause=1.0, wait_for=str(go))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(mock.ca_file).read_bytes())
    session = tmp_path / "live.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "--serve", "--port", "0",
                             "-o", str(session), "--", sys.executable, str(tmp_path / "agent.py"), mock.base_url,
                             str(ca), str(plan)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: list[str] = []
    url_seen = threading.Event()
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if " at http://" in line:
                url_seen.set()
            if line.startswith("ready"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert url_seen.wait(60) and ready.wait(60), "".join(lines)
        url = next(l for l in lines if " at http://" in l).split(" at ", 1)[1].split()[0]
        p = page.page
        p.goto(url)
        expect(p.locator("#live")).to_be_visible()
        p.evaluate("() => { window.__sameDocument = true; }")
        calls = p.locator(".row.llm")
        expect(calls).to_have_count(0)
        go.write_text("go")
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:
            n = calls.count()
            while len(seen) < n:
                seen.append(time.time())
            time.sleep(0.03)
        assert len(seen) == 3, "".join(lines)
        made = [float(t) for t in (tmp_path / "times.txt").read_text().split()]
        delays = [s - m for s, m in zip(seen, made)]
        print(f"\nlive: each call shown {', '.join(f'{d * 1000:.0f} ms' for d in delays)} after the agent had its "
              "answer")
        assert len(made) == 3 and all(d < 1.0 for d in delays), delays
        assert made[2] - made[0] > 1.8  # the calls were a second apart
        expect(calls.nth(2).locator(".snippet")).to_have_text("third")
        # Links are made as the tool's result goes back (the next call): they are on the page already.
        linked = _tool_group(p, command).locator(".row.file", has_text=str(note))
        expect(linked).to_be_visible(timeout=5_000)
        expect(_tool_group(p, command).locator(".row.tool")).to_contain_text("result back after")
        screenshot(p, "live.png")
        expect(p.locator("#live")).to_be_hidden(timeout=15_000)
        assert p.evaluate("() => window.__sameDocument") is True  # never reloaded
        assert any("the recording has ended" in l for l in lines) or proc.poll() is None
        assert not page.errors, page.errors
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, "".join(lines)


class LiveRecording:
    """`record --serve --port 0 -- CMD`, its address, its stderr lines."""

    def __init__(self, session: Path, *cmd: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "--serve", "--port",
                                      "0", "-o", str(session), "--", *cmd], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(60), "".join(self.lines)
        self.url = next(l for l in self.lines if " at http://" in l).split(" at ", 1)[1].split()[0]

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.bpf
def test_record_serve_keeps_up_with_a_busy_agent(page, tmp_path):
    """A hundred programs and file writes a second for several seconds (some
    twenty thousand events a minute), shown as they happen, none left out,
    the last within a second of the work ending."""
    work = tmp_path / "work"
    work.mkdir()
    go, done, quit = tmp_path / "go", tmp_path / "done", tmp_path / "quit"
    script = (f"while [ ! -e {go} ]; do sleep 0.02; done; for i in $(seq 400); do touch {work}/f$i; /bin/true; sleep 0.005; done; "
              f"date +%s.%N > {done}; while [ ! -e {quit} ]; do sleep 0.05; done")
    session = tmp_path / "busy.db"
    rec = LiveRecording(session, "/bin/sh", "-c", script)
    try:
        p = page.page
        p.goto(rec.url)
        expect(p.locator("#live")).to_be_visible()
        go.write_text("go")
        count = f"""() => [[...document.querySelectorAll('.row.file code.path')]
                              .filter(e => e.textContent.startsWith({json.dumps(str(work) + '/f')})).length,
                           [...document.querySelectorAll('.row.process code.argv')]
                              .filter(e => e.textContent === '/bin/true').length]"""
        shown_at = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if p.evaluate(count) == [400, 400]:
                shown_at = time.time()
                break
            time.sleep(0.03)
        assert shown_at is not None, p.evaluate(count)
        ended = float(done.read_text())
        shown_after = shown_at - ended
        took = ended - float(go.stat().st_mtime)
        print(f"\nbusy agent: 800 programs and 400 file writes in {took:.2f} s "
              f"({2000 / took * 60:.0f} events a minute or more); all shown {shown_after * 1000:.0f} ms after")
        assert shown_after < 1.0
        assert "events not shown" not in p.locator("#notes").inner_text()
        assert not page.errors, page.errors
        screenshot(p, "live-busy.png")
    finally:
        # Ctrl-C while the command still runs: the command has a moment to end (it does),
        # then the recording stops, and so does the view, with the command's status.
        rec.proc.send_signal(2)
        quit.write_text("quit")
        assert rec.stop() == 0, "".join(rec.lines)
    assert not any("its view stays" in line for line in rec.lines)
    import sqlite3

    db = sqlite3.connect(session)
    assert db.execute("SELECT count(*) FROM file_activity WHERE path LIKE ?", (f"{work}/f%",)).fetchone()[0] == 400
    assert db.execute("SELECT count(*) FROM processes WHERE filename = '/bin/true'").fetchone()[0] == 400


def test_a_large_session_loads_quickly(page, serve, tmp_path):
    """A shorter stand-in for bench/bench_web.py's 500 MB session."""
    session = tmp_path / "big.db"
    facts = build_session(session, 60, programs_per_tool=30, files_per_tool=90)
    server = serve(session)
    p = page.page
    timeline = lambda r: "/api/s/0/timeline" in r.url  # noqa: E731
    started = time.monotonic()
    with p.expect_response(timeline) as first:
        p.goto(server.url)
    expect(p.locator(".row.llm")).to_have_count(facts["calls"], timeout=30_000)
    loaded = time.monotonic() - started
    size = len(first.value.body())
    print(f"\n{facts['bytes'] / 1e6:.0f} MB session: page loaded in {loaded:.2f} s, timeline answer "
          f"{size / 1e6:.2f} MB")
    assert loaded < 10 and size < 2_000_000
    expect(p.locator("#status")).to_contain_text("processes:")
    # A search asks the server, which looks through everything, not only what was sent.
    with p.expect_response(lambda r: timeline(r) and "q=module_3_2.o" in r.url):
        p.locator("#search").fill("module_3_2.o")
    expect(p.locator(".row.llm")).to_have_count(0)
    expect(p.locator(".row.file")).to_have_count(facts["calls"])
    # Zooming in on a call: the server sends that range.
    p.locator("#search").fill("")
    expect(p.locator(".row.llm")).to_have_count(facts["calls"])
    # The longest conversation, folded: older messages and long texts behind a click.
    p.locator(".row.llm").last.click()
    call = p.locator("#call")
    expect(call.locator(".older summary")).to_have_text(f"{2 * facts['calls'] - 1 - 6} earlier messages")
    expect(call.locator("details.system")).not_to_have_attribute("open", "")
    call.locator("details.system summary").click()
    system = call.locator("pre.system-text")
    cut = len(system.inner_text())
    call.locator("details.system button.show-all").click()
    expect(call.locator("details.system button.show-all")).to_have_count(0)
    assert len(system.inner_text()) > cut
    expect(call.locator("details.thinking pre")).to_have_text(f"thinking about step {facts['calls'] - 1}")
    p.go_back()
    expect(p.locator(".row.llm")).to_have_count(facts["calls"])
    box = p.locator(".lane-llm .track").bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.50, box["y"] + 5)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.52, box["y"] + 5, steps=5)
    p.mouse.up()
    expect(p.locator(".row.llm")).not_to_have_count(facts["calls"])
    shown = p.locator(".row.llm").count()
    assert 0 < shown < facts["calls"] / 5, shown
    assert not page.errors, page.errors
    server.stop()


def test_several_sessions_open_on_a_list_and_losses_are_marked(page, serve, tmp_path):
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    build_session(first, 0.5)
    facts = build_session(second, 0.5, losses=True)
    server = serve(first, second)
    p = page.page
    p.goto(server.url)
    rows = p.locator("tr.session")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(str(first))
    rows.nth(1).locator("a").click()
    expect(p.locator(".row.llm")).to_have_count(facts["calls"])
    expect(p.locator("#notes")).to_contain_text("ring_full_records 3")
    expect(p.locator(".row.loss")).to_contain_text("1234 bytes lost before this TLS call")
    expect(p.locator(".row.llm.incomplete")).to_contain_text("bytes of the response were lost")
    expect(p.locator(".row.process", has_text="git status").locator(".badge.startup")).to_have_text("start-up")
    expect(p.locator(".marks .mark")).to_have_count(2)  # the TLS gap and the incomplete call
    p.locator('#toolbar input[data-kind="loss"]').uncheck()
    expect(p.locator(".marks .mark")).to_have_count(0)
    expect(p.locator(".row.loss")).to_have_count(0)
    p.locator('#toolbar input[data-kind="process"]').uncheck()
    expect(p.locator(".lane-process")).to_have_count(0)
    assert not page.errors, page.errors
    server.stop()
