"""TLS in real builds of BoringSSL: Bun from the npm registry (every variant,
releases and canaries, and `bun build --compile` programs), Debian's
Chromium; and no first run missed: a never-seen build is held until its
probes are attached, without its parent seeing a stopped job and without
being left stopped when agentsight dies.

The builds are fetched with `npm pack` into /var/cache/agentsight-test
(AGENTSIGHT_TEST_BUN_CACHE) on first use. The suite uses a fixed sample;
AGENTSIGHT_TEST_BUN_BUILDS=spread takes one release of each minor of each
variant instead; scripts/bun-matrix.py goes through all of them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentsight.collectors.tls.libraries import BORINGSSL, LibraryAnalyzer
from support import REPO, bun_build, stream

pytestmark = pytest.mark.bpf

# Each minor from 1.1 on, each variant, two canaries, and the shapes that
# tell builds apart: position-independent 1.1 with a five-argument error
# reporter; 1.2 with four, and unaligned functions in musl builds; 1.3 musl
# builds whose functions end in calls that never return; 1.2.11 baseline,
# where a stray byte pattern looks like a call into SSL_do_handshake.
SAMPLE = [
    ("x64", "1.1.0"),
    ("x64-baseline", "1.2.11"),
    ("x64", "1.2.5"),
    ("x64-musl", "1.2.5"),
    ("x64-baseline", "1.3.3"),
    ("x64-musl-baseline", "1.3.3"),
    ("x64", "1.3.9-canary.20260218.1"),
    ("x64", "1.4.2-canary.20260928.1"),
]
SPREAD = [(variant, f"{minor}.{last}") for variant in ("x64", "x64-baseline", "x64-musl", "x64-musl-baseline")
          for minor, last in (("1.1", 45), ("1.2", 23), ("1.3", 14), ("1.4", 5))] + [
    ("x64", "1.2.19-canary.20250726.1"), ("x64-musl", "1.4.2-canary.20260906.1")]
BUILDS = SPREAD if os.environ.get("AGENTSIGHT_TEST_BUN_BUILDS") == "spread" else SAMPLE
RUNNABLE = [b for b in BUILDS if "musl" not in b[0]]  # musl builds need a musl libstdc++

FETCH = textwrap.dedent(
    """
    const [url, body] = process.argv.slice(2);
    const r = await fetch(url, {method: "POST", body, tls: {rejectUnauthorized: false}});
    process.stdout.write(await r.text());
    """
)


def ids(builds):
    return [f"{v}-{r}" for v, r in builds]


@pytest.fixture
def cold(tmp_path):
    """An empty analysis cache: every build is never seen before."""
    return dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))


@pytest.fixture
def fetch_script(tmp_path) -> Path:
    script = tmp_path / "fetch.mjs"
    script.write_text(FETCH)
    return script


def run_fetch(binary, script, url: str, marker: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(binary), *([str(script)] if script else []), url, marker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert out == f"echo:{marker}".encode(), err
    return proc


def assert_captured(events, pid: int, marker: str) -> None:
    sent, received = stream(events, pid, "send"), stream(events, pid, "recv")
    assert sent.startswith(b"POST /echo HTTP/1.1\r\n") and sent.endswith(marker.encode())
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(f"echo:{marker}".encode())


def held_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if " TLS code was hooked: seized" in line), "")


def held_ms(stderr: str, program) -> float | None:
    """How long `program` was held, from the summary (None: it was not)."""
    m = re.search(rf"{re.escape(str(program))} (\d+) ms", held_line(stderr))
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("variant,version", BUILDS, ids=ids(BUILDS))
def test_every_function_located_in_bun_build(variant, version, tmp_path):
    binary = bun_build(variant, version)
    started = time.monotonic()
    library = LibraryAnalyzer(cache_dir=tmp_path).analyze(str(binary))
    seconds = time.monotonic() - started
    assert library.kind == BORINGSSL and set(library.functions) == {"SSL_write", "SSL_read", "SSL_do_handshake"}
    assert set(library.evidence) == set(library.functions)
    assert seconds < 2, f"first analysis took {seconds:.2f} s"


@pytest.mark.parametrize("variant,version", [b for b in BUILDS if "musl" in b[0]],
                         ids=ids([b for b in BUILDS if "musl" in b[0]]))
def test_musl_build_found_at_the_source_lines_of_its_glibc_twin(variant, version):
    """musl builds do not run here; the same release built for glibc does (its
    fetch is captured below), and the error calls' ssl_lib.cc lines come from
    the source, not the compiler: the same functions have the same lines."""
    from agentsight.collectors.tls import boringssl

    twin = (variant.replace("-musl", ""), version)
    musl = boringssl.locate(str(bun_build(variant, version)))
    glibc = boringssl.locate(str(bun_build(*twin)))
    assert musl.lines == glibc.lines and all(musl.lines.values())
    assert musl.functions != glibc.functions  # other code, other places


@pytest.mark.parametrize("variant,version", RUNNABLE, ids=ids(RUNNABLE))
def test_fetch_of_a_never_seen_build_is_captured_from_its_first_call(variant, version, https_server, capture,
                                                                    cold, fetch_script):
    binary = bun_build(variant, version)
    run = capture("ssl", "--hold", env=cold)
    marker = f"first-call-{variant}-{version}"
    proc = run_fetch(binary, fetch_script, https_server.url + "/echo", marker)
    events, stderr = run.stop()
    assert_captured(events, proc.pid, marker)
    handshakes = [e for e in events if e["pid"] == proc.pid and e["dir"] == "handshake"]
    assert handshakes, "the handshake, the first TLS call, was missed"
    assert held_ms(stderr, binary) is not None, stderr


@pytest.mark.parametrize("variant,version", [RUNNABLE[0], RUNNABLE[-1]], ids=ids([RUNNABLE[0], RUNNABLE[-1]]))
def test_bun_build_compile_executable(variant, version, https_server, capture, cold, tmp_path, fetch_script):
    bun = bun_build(variant, version)
    program = tmp_path / "agent"
    subprocess.run([str(bun), "build", "--compile", str(fetch_script), "--outfile", str(program)],
                   check=True, capture_output=True, timeout=120, cwd=tmp_path)
    probed = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "probes", "--json", "--binary",
                                        str(program)], capture_output=True, text=True, cwd=REPO, env=cold,
                                       check=True).stdout)
    (found,) = probed["files"]
    from agentsight.collectors.tls import boringssl

    assert found["kind"] == BORINGSSL and found["functions"] == boringssl.locate(str(bun)).functions
    run = capture("ssl", "--hold", env=cold)
    marker = f"compiled-{version}"
    proc = run_fetch(program, None, https_server.url + "/echo", marker)
    events, _ = run.stop()
    assert_captured(events, proc.pid, marker)


def test_chromium_headless(https_server, capture, tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("chromium is not installed; scripts/test.sh installs it")
    ssl = capture("ssl", env=dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache")))
    process = capture("process", "--no-open")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={tmp_path / 'profile'}", "--ignore-certificate-errors",
                             "--dump-dom", https_server.url + "/page-for-chromium"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert b"hello from the test server" in out, err[-2000:]
    events, stderr = ssl.stop()
    activity, _ = process.stop()
    assert "/usr/lib/chromium/chromium (boringssl-stripped)" in stderr.split("ready", 1)[1].splitlines()[0]
    tree, grew = {proc.pid}, True
    while grew:
        children = {e["child_pid"] for e in activity if e["type"] == "fork" and e["pid"] in tree}
        grew = not children <= tree
        tree |= children
    requests = [e for e in events if e["type"] == "ssl" and e["dir"] == "send"
                and e.get("data", "").startswith("GET /page-for-chromium HTTP/1.1\r\n")]
    assert requests, stderr
    assert all(e["pid"] in tree for e in requests)


def test_record_first_run_of_a_never_seen_build(https_server, cold, tmp_path, fetch_script):
    """The command itself: analysed and hooked before it starts."""
    binary = bun_build(*RUNNABLE[-1])
    session = record_fetch(tmp_path, cold, [str(binary), str(fetch_script)], https_server.url, "record-direct")
    assert_session_has(session, "record-direct", cold)


def test_record_first_run_of_a_build_started_by_the_command(https_server, cold, tmp_path, fetch_script):
    """A program the command starts: held at exec until hooked."""
    binary = bun_build(*RUNNABLE[0])
    session, stderr = record_fetch(tmp_path, cold, ["sh", "-c", f'"{binary}" "{fetch_script}" "$@"', "sh"],
                                   https_server.url, "record-via-shell", want_stderr=True)
    assert_session_has(session, "record-via-shell", cold)
    assert held_ms(stderr, binary) is not None, stderr


def record_fetch(tmp_path, env, command, url, marker, want_stderr=False):
    session = tmp_path / f"{marker}.db"
    done = subprocess.run([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                           *command, url + "/echo", marker], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == f"echo:{marker}", done.stderr
    return (session, done.stderr) if want_stderr else session


def assert_session_has(session: Path, marker: str, env) -> None:
    exported = subprocess.run([sys.executable, "-m", "agentsight", "export", str(session)], capture_output=True,
                              cwd=REPO, env=env, check=True).stdout
    events = [json.loads(line) for line in exported.splitlines()]
    ssl = [e for e in events if e["type"] == "ssl"]
    (pid,) = {e["pid"] for e in ssl if marker in e.get("data", "")} or {None}
    assert pid is not None, f"no TLS traffic of the run in the session ({len(ssl)} ssl events)"
    assert_captured(ssl, pid, marker)


PARENT = textwrap.dedent(
    """
    # A parent like a shell: it watches its child with WUNTRACED, as job
    # control does, and says if it ever sees it stopped.
    import os, sys
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    print(pid, flush=True)
    while True:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            print("stopped", flush=True)
            os.kill(pid, 18)
            continue
        print("exit", os.waitstatus_to_exitcode(status), flush=True)
        break
    """
)


def tracer_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])
    except (OSError, StopIteration):
        return 0


def start_watched(program: Path, *args: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(program), *args], stdout=subprocess.PIPE, text=True)
    return parent, int(parent.stdout.readline())


def test_hold_is_invisible_to_the_parent(https_server, capture, cold, tmp_path, fetch_script):
    program = tmp_path / "bun"
    shutil.copy(bun_build(*RUNNABLE[1]), program)  # a new file: never seen
    run = capture("ssl", "--hold", env=cold)
    parent, child = start_watched(program, str(fetch_script), https_server.url + "/echo", "watched")
    seen_held = False
    while parent.poll() is None and not seen_held:
        seen_held = tracer_of(child) == run.proc.pid or any(tracer_of(int(t)) == run.proc.pid
                                                             for t in _tasks(child))
    out, _ = parent.communicate(timeout=60)
    events, stderr = run.stop()
    assert "stopped" not in out and out.strip().endswith("exit 0"), out
    assert held_ms(stderr, program) is not None, stderr
    assert_captured(events, child, "watched")


def test_held_program_runs_on_when_agentsight_is_killed(https_server, capture, cold, tmp_path, fetch_script):
    program = tmp_path / "bun"
    shutil.copy(bun_build(*RUNNABLE[0]), program)
    run = capture("ssl", "--hold", env=cold)
    parent, child = start_watched(program, str(fetch_script), https_server.url + "/echo", "outlived")
    deadline = time.monotonic() + 30
    while not any(tracer_of(int(t)) for t in _tasks(child)):
        assert time.monotonic() < deadline and parent.poll() is None, "the program was never held"
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    out, _ = parent.communicate(timeout=60)
    assert out.startswith("echo:outlived") and out.endswith("exit 0\n") and "stopped" not in out, out


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def test_known_program_is_never_held(https_server, capture, cold, fetch_script):
    binary = bun_build(*RUNNABLE[0])
    run = capture("ssl", "--hold", env=cold)
    first = run_fetch(binary, fetch_script, https_server.url + "/echo", "first")
    second = run_fetch(binary, fetch_script, https_server.url + "/echo", "second")
    events, stderr = run.stop()
    assert held_line(stderr).count(f"{binary} ") == 1, stderr  # the first run only
    assert_captured(events, first.pid, "first")
    assert_captured(events, second.pid, "second")
    # Another run: known from the cache, hooked at start.
    run = capture("ssl", "--hold", env=cold)
    third = run_fetch(binary, fetch_script, https_server.url + "/echo", "third")
    events, stderr = run.stop()
    assert held_ms(stderr, binary) is None, stderr
    assert_captured(events, third.pid, "third")


def test_ready_line_names_a_file_that_cannot_be_located(capture, cold, tmp_path):
    from test_tls_locator import build, stripped

    program = stripped(build(tmp_path, "clang", "-O2 -fPIE", "-pie", scramble=2))
    running = subprocess.Popen([str(program), "GET / HTTP/1.1\r\n\r\n", "60"], stdout=subprocess.PIPE)
    try:
        running.stdout.readline()  # it made its calls and waits now
        run = capture("ssl", env=cold)
        _, stderr = run.stop()
    finally:
        running.kill()
        running.wait()
    ready = stderr.split("ready: ", 1)[1].splitlines()[0]
    hooked, _, failed = ready.partition("; not hooked: ")
    assert str(program) not in hooked
    assert failed.startswith(f"{program}: BoringSSL is linked in, but the SSL_write found at offset ")
    assert "does not call the SSL_do_handshake found at offset" in failed and "so it is not hooked" in failed
