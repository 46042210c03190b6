"""The ssl collector against real clients and a real local HTTPS server."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from support import pattern_bytes, stream

pytestmark = pytest.mark.bpf

PY_CLIENT = textwrap.dedent(
    """
    import ssl, sys, urllib.request
    url, cafile, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    ctx = ssl.create_default_context(cafile=cafile)
    data = body if body else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), context=ctx) as r:
        got = r.read()
    sys.stdout.write(str(len(got)))
    """
)

NODE_CLIENT = textwrap.dedent(
    """
    const https = require('https'); const fs = require('fs');
    const [url, cafile, body] = process.argv.slice(1);
    const req = https.request(url, {method: 'POST', ca: fs.readFileSync(cafile),
        headers: {'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body)}}, res => {
      let n = 0; res.on('data', d => n += d.length); res.on('end', () => process.stdout.write(String(n)));
    });
    req.end(body);
    """
)


@pytest.mark.parametrize("client", ["curl", "python", "node"])
def test_request_and_response_bodies_are_captured(client, https_server, capture):
    if client == "node" and not shutil.which("node"):
        pytest.fail("node is not installed; the test setup installs it (scripts/test.sh)")
    run = capture("ssl")
    body = f"request-from-{client}-{uuid.uuid4().hex}"
    result = _run_with_pid(client, https_server.url + "/echo", str(https_server.cert), body)
    events, stderr = run.stop()
    pid = result["pid"]

    client_events = [e for e in events if e["pid"] == pid and e["type"] == "ssl" and e["dir"] in ("send", "recv")]
    assert client_events, f"no ssl events for {client} pid {pid}; stderr: {stderr}"
    sent = stream(events, pid, "send")
    received = stream(events, pid, "recv")
    # Request line, headers, then exactly the body that was sent.
    assert sent.startswith(b"POST /echo HTTP/1.1\r\n")
    assert sent.endswith(b"\r\n\r\n" + body.encode())
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n\r\necho:" + body.encode())
    assert {e["conn"] for e in client_events} == {client_events[0]["conn"]}
    for e in client_events:
        assert e["len"] == len(e["data"].encode())
        assert e["truncated"] == 0 and e["gap"] == 0
        assert e["fn"] in ("SSL_write", "SSL_read", "ssl_write_internal", "ssl_read_internal")
        assert e["comm"] and e["tid"] and e["ts"] > 1_600_000_000 * 10**9
    # libssl is hooked where SSL_write/SSL_read and their _ex variants meet;
    # node's OpenSSL at the exported functions.
    expected_fns = {"python": {"ssl_write_internal", "ssl_read_internal"},
                    "curl": {"ssl_write_internal", "ssl_read_internal"},
                    "node": {"SSL_write", "SSL_read"}}[client]
    assert {e["fn"] for e in client_events} <= expected_fns
    # The connection's end is reported once its session is freed.
    closes = [e for e in events if e["pid"] == pid and e["type"] == "ssl" and e["dir"] == "close"]
    assert [(e["conn"], e["fn"]) for e in closes] == [(client_events[0]["conn"], "SSL_free")]
    assert closes[0]["ts"] >= client_events[-1]["ts"]

    # The server (this test process, Python's ssl) saw the same request arrive.
    server_received = stream(events, os.getpid(), "recv")
    assert body.encode() in server_received
    assert "ready" in stderr and "lost in the ring buffer: 0 records" in stderr


def _run_with_pid(client: str, url: str, cafile: str, body: str) -> dict:
    """Runs the client and returns its pid along with its output."""
    if client == "curl":
        cmd = ["curl", "-sS", "--http1.1", "--cacert", cafile, "--data-binary", body, url]
    elif client == "python":
        cmd = [sys.executable, "-c", PY_CLIENT, url, cafile, body]
    else:
        cmd = ["node", "-e", NODE_CLIENT, url, cafile, body]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return {"pid": proc.pid, "stdout": out}


def test_handshake_is_reported_with_latency(https_server, capture):
    run = capture("ssl")
    result = _run_with_pid("curl", https_server.url + "/", str(https_server.cert), "")
    events, _ = run.stop()
    handshakes = [e for e in events if e["pid"] == result["pid"] and e["dir"] == "handshake"]
    assert handshakes, "curl calls SSL_do_handshake; no handshake event"
    assert handshakes[-1]["fn"] == "SSL_do_handshake"
    assert handshakes[-1]["ret"] == 1
    assert 0 < handshakes[-1]["latency_ns"] < 10 * 10**9


def test_one_mebibyte_response_is_captured_whole(https_server, capture):
    size = 1 << 20
    run = capture("ssl")
    result = _run_with_pid("python", f"{https_server.url}/bytes/{size}", str(https_server.cert), "")
    assert result["stdout"] == str(size).encode()
    events, stderr = run.stop()
    received = stream(events, result["pid"], "recv")
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % size in head
    assert body == pattern_bytes(size)
    # The server wrote the whole body in one SSL_write_ex: reassembled from
    # several records into one event.
    big = [e for e in events if e["pid"] == os.getpid() and e["dir"] == "send" and e["len"] == size]
    assert len(big) == 1 and big[0]["truncated"] == 0
    assert big[0]["data"].encode() == pattern_bytes(size)
    assert "truncated: 0 bytes" in stderr


def test_calls_over_the_capture_limit_report_exact_truncation(https_server, capture):
    size = 1 << 20
    limit = 256 << 10
    run = capture("ssl", "--max-capture", "256K", "--pid", str(os.getpid()))
    result = _run_with_pid("python", f"{https_server.url}/bytes/{size}", str(https_server.cert), "")
    assert result["stdout"] == str(size).encode()
    events, stderr = run.stop()
    big = [e for e in events if e["dir"] == "send" and e["len"] == size]
    assert len(big) == 1
    assert big[0]["truncated"] == size - limit
    assert big[0]["data"].encode() == pattern_bytes(size)[:limit]
    assert f"truncated: {size - limit} bytes" in stderr


def test_pid_filter_excludes_other_processes(https_server, capture, tmp_path):
    waiting = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()\n" + PY_CLIENT,
         https_server.url + "/echo", str(https_server.cert), "filtered-in"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        run = capture("ssl", "--pid", str(waiting.pid))
        other = _run_with_pid("curl", https_server.url + "/echo", str(https_server.cert), "filtered-out")
        out, err = waiting.communicate(b"go\n", timeout=60)
        assert waiting.returncode == 0, err
        events, _ = run.stop()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert events, "the filtered process's traffic is missing"
    assert {e["pid"] for e in events} == {waiting.pid}
    assert b"filtered-in" in stream(events, waiting.pid, "send")
    assert other["pid"] not in {e["pid"] for e in events}


def test_comm_filter_is_applied_in_the_kernel(https_server, capture):
    run = capture("ssl", "--comm", "curl")
    curl = _run_with_pid("curl", https_server.url + "/echo", str(https_server.cert), "by-name")
    py = _run_with_pid("python", https_server.url + "/echo", str(https_server.cert), "not-by-name")
    events, _ = run.stop()
    assert {e["comm"] for e in events} == {"curl"}
    assert b"by-name" in stream(events, curl["pid"], "send")
    assert py["pid"] not in {e["pid"] for e in events}


def test_binary_override_hooks_only_that_file(https_server, capture):
    node = shutil.which("node")
    run = capture("ssl", "--binary", os.path.realpath(node))
    node_run = _run_with_pid("node", https_server.url + "/echo", str(https_server.cert), "node-only")
    curl = _run_with_pid("curl", https_server.url + "/echo", str(https_server.cert), "curl-absent")
    events, stderr = run.stop()
    assert stderr.splitlines()[0] == f"ready: ssl: {os.path.realpath(node)} (openssl-static)"
    assert b"node-only" in stream(events, node_run["pid"], "send")
    assert curl["pid"] not in {e["pid"] for e in events}


IN_MEMORY_TRANSFER = textwrap.dedent(
    """
    # One process, a TLS client and server over a socketpair: on a line on
    # stdin the server writes CALLS chunks of SIZE bytes, and the client reads
    # until it has them all ("burst"); on a second line, one chunk more (the
    # total read).
    import socket, ssl, sys, threading
    cert, key, calls, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.stdin.readline()
    a, b = socket.socketpair()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.load_verify_locations(cert)
    more = threading.Event()
    def serve():
        s = sctx.wrap_socket(a, server_side=True)
        for i in range(calls):
            s.sendall(bytes([65 + i % 26]) * size)
        more.wait()
        s.sendall(b"z" * size)
    t = threading.Thread(target=serve); t.start()
    c = cctx.wrap_socket(b, server_hostname="localhost")
    got = 0
    while got < calls * size:
        got += len(c.recv(1 << 20))
    print("burst", flush=True)
    sys.stdin.readline()
    more.set()
    while got < (calls + 1) * size:
        got += len(c.recv(1 << 20))
    t.join()
    print(got)
    """
)


def test_full_ring_losses_are_counted_exactly(https_server, capture):
    calls, size = 64, 16384
    proc = subprocess.Popen([sys.executable, "-c", IN_MEMORY_TRANSFER, str(https_server.cert),
                             str(https_server.key), str(calls), str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Room for one 16 KiB record at a time, and the consumer stopped while
        # the burst comes: most of it cannot fit, however fast the consumer
        # would have drained.
        run = capture("ssl", "--pid", str(proc.pid), "--ring-size", "32K")
        os.kill(run.proc.pid, signal.SIGSTOP)
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"burst\n"
        finally:
            os.kill(run.proc.pid, signal.SIGCONT)
        time.sleep(1)  # the consumer drains what fit (it polls every 0.1 s)
        # One call after the losses: it carries them as its gap.
        out, err = proc.communicate(b"more\n", timeout=60)
        assert proc.returncode == 0, err
        assert int(out) == (calls + 1) * size
        events, stderr = run.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    data_events = [e for e in events if e["dir"] in ("send", "recv")]
    captured = sum(len(e["data"].encode()) for e in data_events)
    m = re.search(r"lost in the ring buffer: (\d+) records \((\d+) bytes of data\)", stderr)
    lost_records, lost_bytes = int(m.group(1)), int(m.group(2))
    assert lost_records > 0, "the burst was expected to overflow a 32 KiB ring"
    # Every byte written and read is either captured or counted as lost.
    assert captured + lost_bytes == 2 * (calls + 1) * size
    for e in data_events:
        assert len(e["data"].encode()) + e["truncated"] == e["len"]
    # Whole calls that were lost show up as a gap before the next call on the conn.
    assert sum(e["gap"] for e in data_events) > 0 or any(e["truncated"] for e in data_events)


def test_perf_event_attach_for_kernels_without_uprobe_multi(https_server, capture):
    """Kernels before 6.6 get one perf-event uprobe per function; forced here."""
    env = dict(os.environ, AGENTSIGHT_UPROBE_ATTACH="perf")
    run = capture("ssl", env=env)
    result = _run_with_pid("python", https_server.url + "/echo", str(https_server.cert), "via-perf-links")
    events, _ = run.stop()
    assert stream(events, result["pid"], "send").endswith(b"via-perf-links")
    assert stream(events, result["pid"], "recv").endswith(b"echo:via-perf-links")
    fns = {e["fn"] for e in events if e["pid"] == result["pid"]}
    assert fns == {"SSL_do_handshake", "ssl_write_internal", "ssl_read_internal", "SSL_free"}
