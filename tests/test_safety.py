"""What agentsight stores and shows is safe: no secrets in any output, private
files never written through links, and odd input that never stops a capture."""
from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from llm_mock import LLMMock, Script
from support import REPO, RunningCapture

NOBODY = 65534

# One marker per kind of secret; none may appear in any output.
SECRETS = {
    "header x-api-key": "MarkerXApiKey0001",
    "header authorization": "MarkerBearer0002",
    "header cookie": "MarkerCookie0003",
    "query key": "MarkerQueryKey0004",
    "query api_key": "MarkerQueryApiKey0005",
    "query token": "MarkerQueryToken0006",
    "json api_key": "MarkerJsonApiKey0007",
    "binary write x-api-key": "MarkerBinaryHdr0008",
    "argv curl -H": "MarkerArgvHeader0009",
    "argv curl -u": "MarkerArgvUserPass0010",
    "argv --password=": "MarkerArgvPassword0011",
    "argv TOKEN=": "MarkerArgvEnvToken0012",
    "token shape": "sk-ant-api03-MarkerTokenShape0013",
}

CLIENT = textwrap.dedent(r"""
    import gzip, json, ssl, subprocess, sys, urllib.request
    base, ca = sys.argv[1], sys.argv[2]
    s = json.load(open(sys.argv[3]))  # from a file: the client's own argv must not carry them
    ctx = ssl.create_default_context(cafile=ca)

    def post(path, body, headers):
        req = urllib.request.Request(base + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, context=ctx) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            return e.read()

    body = json.dumps({"model": "claude-safety", "max_tokens": 10, "api_key": s["json api_key"],
                       "messages": [{"role": "user", "content": "keep " + s["token shape"] + " safe"}]}).encode()
    query = f"?key={s['query key']}&api_key={s['query api_key']}&token={s['query token']}"
    post("/v1/messages" + query, body, {
        "content-type": "application/json", "x-api-key": s["header x-api-key"],
        "authorization": "Bearer " + s["header authorization"], "cookie": "session=" + s["header cookie"]})
    # Headers and a gzip body in one TLS write: not UTF-8.
    import socket
    host, port = base.removeprefix("https://").split(":")
    packed = gzip.compress(body)
    with ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host) as tls:
        tls.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"Content-Encoding: gzip\r\nX-Api-Key: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (host.encode(), s["binary write x-api-key"].encode(), len(packed), packed))
        while tls.recv(65536):
            pass
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", ca, "-H", "x-api-key: " + s["argv curl -H"],
                    "-u", "user:" + s["argv curl -u"], base + "/v1/models"])
    subprocess.run([sys.executable, "-c", "pass", "--password=" + s["argv --password="]])
    subprocess.run("TOKEN=" + s["argv TOKEN="] + " true", shell=True)
""")


def _strings_in(path: Path) -> list[bytes]:
    """A file's bytes, and every base64 payload inside it decoded."""
    data = path.read_bytes()
    out = [data]
    if path.suffix == ".db" or path.name.endswith(("-wal", "-shm")):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            for (event,) in db.execute("SELECT event FROM raw_events"):
                d = orjson.loads(event)
                if "data_b64" in d:
                    out.append(base64.b64decode(d["data_b64"]))
            db.close()
        except sqlite3.DatabaseError:
            pass
    else:
        for line in data.splitlines():
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(d, dict) and "data_b64" in d:
                out.append(base64.b64decode(d["data_b64"]))
    return out


def _assert_no_secret(paths: list[Path]) -> None:
    found = []
    for path in paths:
        for blob in _strings_in(path):
            for kind, marker in SECRETS.items():
                if marker.encode() in blob:
                    found.append(f"{kind} in {path.name}")
    assert not found, found


def _agentsight(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentsight", *args], capture_output=True, cwd=REPO,
                          timeout=120, **kwargs)


@pytest.mark.bpf
def test_no_secret_reaches_any_output(tmp_path):
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "secrets.json").write_text(json.dumps(SECRETS))
    with LLMMock(Script(text="fine")) as mock:
        args = [sys.executable, str(client), mock.base_url, mock.ca_file, str(markers / "secrets.json")]
        trace = RunningCapture(["trace", "--raw", str(tmp_path / "raw.jsonl")], tmp_path / "trace.jsonl")
        try:
            subprocess.run(args, check=True, timeout=60)
            trace_events, _ = trace.stop()
        finally:
            trace.kill()
        session = tmp_path / "session.db"
        recorded = _agentsight("record", "--no-live", "-o", str(session), "--", *args)
        assert recorded.returncode == 0, recorded.stderr
        # A recording killed mid-way keeps its write-ahead log: that too.
        killed = tmp_path / "killed.db"
        proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(killed), "--",
                                 "sh", "-c", f"{' '.join(map(repr, args))}; sleep 30"],
                                cwd=REPO, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(mock.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # past a commit
        proc.kill()
        proc.wait()
        for (pid,) in sqlite3.connect(killed).execute("SELECT DISTINCT pid FROM processes WHERE end_ns IS NULL"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The captures did see what the secrets were sent with.
    assert any(e["type"] == "llm_call" and e["model"] == "claude-safety" for e in trace_events)
    assert any(e["type"] == "exec" and e["filename"].endswith("curl") for e in trace_events)
    outputs = [tmp_path / "trace.jsonl", tmp_path / "raw.jsonl", session]
    (tmp_path / "export.jsonl").write_bytes(_agentsight("export", str(session)).stdout)
    (tmp_path / "report.txt").write_bytes(_agentsight("report", str(session)).stdout)
    (tmp_path / "report.json").write_bytes(_agentsight("report", str(session), "--json").stdout)
    outputs += [tmp_path / "export.jsonl", tmp_path / "report.txt", tmp_path / "report.json"]
    outputs += [p for p in tmp_path.glob("killed.db*")]
    assert any(p.name == "killed.db-wal" for p in outputs)
    assert all(p.stat().st_size > 0 for p in outputs)
    _assert_no_secret(outputs)
    # The binary write was captured, and masked in place.
    raw = [orjson.loads(line) for line in (tmp_path / "raw.jsonl").read_bytes().splitlines()]
    binary = [base64.b64decode(e["data_b64"]) for e in raw if e["type"] == "ssl" and "data_b64" in e]
    masked = [b for b in binary if b.startswith(b"POST /v1/messages") and b"x-api-key: " in b.lower()]
    assert masked and all(b"*" * len(SECRETS["binary write x-api-key"]) in b for b in masked)


@pytest.mark.bpf
def test_files_are_private_and_belong_to_the_sudo_caller(tmp_path):
    tmp_path.chmod(0o755)
    env = dict(os.environ, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY))
    out, raw = tmp_path / "trace.jsonl", tmp_path / "raw.jsonl"
    result = _agentsight("trace", "--duration", "0.5", "-o", str(out), "--raw", str(raw), env=env)
    assert result.returncode == 0, result.stderr
    session = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             "sh", "-c", "ls / >/dev/null; sleep 2"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not Path(f"{session}-wal").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    while_recording = {p.name: os.stat(p) for p in tmp_path.glob("s.db*")}
    assert proc.wait(timeout=60) == 0
    exported = tmp_path / "export.jsonl"
    assert _agentsight("export", str(session), "-o", str(exported), env=env).returncode == 0
    assert set(while_recording) >= {"s.db", "s.db-wal", "s.db-shm"}
    for name, st in list(while_recording.items()) + [(p.name, os.stat(p)) for p in (out, raw, session, exported)]:
        assert stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name


@pytest.mark.bpf
def test_outputs_are_never_written_through_links_or_over_files(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    for args in (["trace", "--duration", "0.3", "-o", str(link)],
                 ["trace", "--duration", "0.3", "-o", str(link), "--overwrite"],
                 ["trace", "--duration", "0.3", "-o", str(tmp_path / "new"), "--raw", str(link)],
                 ["record", "--no-live", "-o", str(link), "--", "true"]):
        result = _agentsight(*args, text=True)
        assert result.returncode == 2, (args, result.stderr)
        assert "symbolic link" in result.stderr or "exists already" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    result = _agentsight("record", "--no-live", "-o", str(dangling), "--", "true", text=True)
    assert result.returncode == 2 and not (tmp_path / "would-be-created").exists()
    existing = tmp_path / "existing.jsonl"
    existing.write_text("old\n")
    result = _agentsight("trace", "--duration", "0.3", "-o", str(existing), text=True)
    assert result.returncode == 2 and "exists already; choose another file, or give --overwrite" in result.stderr
    assert existing.read_text() == "old\n"
    assert _agentsight("trace", "--duration", "0.3", "-o", str(existing), "--overwrite").returncode == 0
    assert existing.read_text() != "old\n" and stat.S_IMODE(existing.stat().st_mode) == 0o600


def test_replay_into_a_closed_pipe_and_a_full_device(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(orjson.dumps({"type": "exec", "ts": i, "pid": 1, "tid": 1, "comm": "x", "uid": 0,
                                           "ppid": 0, "filename": "/x", "argv": ["x"], "argv_truncated": False,
                                           "cwd": "/"}) + b"\n" for i in range(50_000)))
    head = subprocess.run(f"{sys.executable} -m agentsight replay {raw} | head -1", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert head.stdout.count("\n") == 1 and "Traceback" not in head.stderr, head.stderr
    full = _agentsight("replay", str(raw), "-o", "/dev/full", text=True)
    assert full.returncode == 1
    assert "cannot write /dev/full: No space left on device" in full.stderr and "Traceback" not in full.stderr


@pytest.mark.bpf
def test_a_session_of_another_user_says_permission_denied(tmp_path):
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="agentsight-safety-"))  # a directory anyone may search
    shared.chmod(0o755)
    session = shared / "s.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             "sh", "-c", "ls / > /dev/null; sleep 30"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("ready"):
            break
    time.sleep(1.5)
    proc.kill()  # a crashed recording: root's, 0600, its WAL still there
    proc.wait()
    for (pid,) in sqlite3.connect(session).execute("SELECT DISTINCT pid FROM processes WHERE end_ns IS NULL"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = subprocess.run(as_nobody + [sys.executable, "-m", "agentsight", "report", str(session)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "permission denied" in result.stderr and "not an agentsight session" not in result.stderr
    text = _agentsight("report", str(session), text=True).stdout
    import shutil

    shutil.rmtree(shared)
    first = text.splitlines()[0]
    assert "interrupted (the last event at " in first and "exit unknown" in first and " 0.0 s" not in first


@pytest.mark.bpf
def test_json_nested_too_deeply_to_write_does_not_stop_trace(tmp_path):
    with LLMMock(Script(text="fine")) as mock:
        run = RunningCapture(["trace"], tmp_path / "trace.jsonl")
        try:
            ctx = mock.ssl_context()
            import urllib.request

            deep: object = "bottom"
            for _ in range(400):
                deep = [deep]
            for i, messages in enumerate(([{"role": "user", "content": deep}], [{"role": "user", "content": "hi"}])):
                body = json.dumps({"model": f"claude-deep-{i}", "max_tokens": 5, "messages": messages}).encode()
                req = urllib.request.Request(mock.base_url + "/v1/messages", data=body,
                                             headers={"content-type": "application/json", "x-api-key": "k"})
                with urllib.request.urlopen(req, context=ctx) as r:
                    r.read()
            events, stderr = run.stop()
        finally:
            run.kill()
    models = [e["model"] for e in events if e["type"] == "llm_call" and e["side"] == "client"]
    assert models == ["claude-deep-0", "claude-deep-1"], stderr
    assert "summarised" in stderr
