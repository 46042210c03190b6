"""TLS stacks agents really use, found without naming paths: Bun's stripped
BoringSSL, node copied under a home directory, GnuTLS, and Python in
another mount namespace."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from support import REPO, pattern_bytes, stream

pytestmark = pytest.mark.bpf

BUN_SCRIPT = textwrap.dedent(
    """
    const [url, body] = process.argv.slice(2);
    if (process.env.WAIT_FOR_STDIN) { for await (const _ of console) break; }
    const r = await fetch(url, {method: "POST", body, tls: {rejectUnauthorized: false}});
    process.stdout.write(await r.text());
    """
)


@pytest.fixture(scope="module")
def bun() -> str:
    path = os.environ.get("AGENTSIGHT_TEST_BUN", "/opt/agentsight-test/bun/package/bin/bun")
    if not os.access(path, os.X_OK):
        pytest.fail(f"Bun is not installed at {path}; scripts/test.sh installs it (or set AGENTSIGHT_TEST_BUN)")
    return path


@pytest.fixture
def cache_env(tmp_path):
    """A private analysis cache, so each test starts cold."""
    return dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))


def probes(*args: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-m", "agentsight", "probes", "--json", *args],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_bun_stripped_boringssl_is_located_and_cached(bun, cache_env):
    cold = probes("--binary", bun, env=cache_env)
    (found,) = cold["files"]
    assert found["kind"] == "boringssl-stripped" and not found["from_cache"]
    assert set(found["functions"]) == {"SSL_write", "SSL_read", "SSL_do_handshake"}
    warm = probes("--binary", bun, env=cache_env)
    assert warm["files"][0]["from_cache"] and warm["files"][0]["functions"] == found["functions"]


def test_bun_analysed_before_is_hooked_from_the_start(bun, https_server, capture, cache_env, tmp_path):
    """A TLS executable seen on an earlier run is hooked when agentsight starts,
    so a program launched later is covered from its very first instruction."""
    probes("--binary", bun, env=cache_env)  # analysed once before, as by an earlier run
    script = tmp_path / "fetch.mjs"
    script.write_text(BUN_SCRIPT)
    run = capture("ssl", env=cache_env)
    proc = subprocess.run([bun, str(script), https_server.url + "/echo", "hello-from-bun"],
                          capture_output=True, timeout=60)
    assert proc.stdout == b"echo:hello-from-bun", proc.stderr
    events, stderr = run.stop()
    bun_events = [e for e in events if e["comm"] == "bun" or e["comm"].startswith("HTTP")]
    pids = {e["pid"] for e in bun_events}
    assert len(pids) == 1, stderr
    (pid,) = pids
    assert stream(events, pid, "send").startswith(b"POST /echo HTTP/1.1\r\n")
    assert stream(events, pid, "send").endswith(b"hello-from-bun")
    assert stream(events, pid, "recv").endswith(b"echo:hello-from-bun")
    assert {e["fn"] for e in bun_events if e["dir"] in ("send", "recv")} <= {"SSL_write", "SSL_read"}
    assert f"{bun} (boringssl-stripped)" in stderr.split("ready", 1)[1].splitlines()[0]


def test_bun_already_running_is_found_without_a_cache(bun, https_server, capture, cache_env, tmp_path):
    script = tmp_path / "fetch.mjs"
    script.write_text(BUN_SCRIPT)
    proc = subprocess.Popen([bun, str(script), https_server.url + "/echo", "bun-was-waiting"],
                            env=dict(os.environ, WAIT_FOR_STDIN="1"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run = capture("ssl", env=cache_env)
        out, err = proc.communicate(b"go\n", timeout=60)
        assert out == b"echo:bun-was-waiting", err
        events, stderr = run.stop()
    finally:
        proc.kill()
    assert "(boringssl-stripped)" in stderr.split("ready", 1)[1].splitlines()[0]
    assert stream(events, proc.pid, "send").endswith(b"bun-was-waiting")
    assert stream(events, proc.pid, "recv").endswith(b"echo:bun-was-waiting")


NODE_CLIENT = textwrap.dedent(
    """
    const https = require('https');
    const [url, body] = process.argv.slice(1);
    const req = https.request(url, {method: 'POST', rejectUnauthorized: false}, res => {
      let d = ''; res.on('data', c => d += c); res.on('end', () => process.stdout.write(d));
    });
    req.end(body);
    """
)


def test_node_copied_under_a_home_directory(https_server, capture, tmp_path):
    node_copy = tmp_path / "home" / ".nvm" / "versions" / "node" / "v20.0.0" / "bin" / "node"
    node_copy.parent.mkdir(parents=True)
    shutil.copy2(os.path.realpath(shutil.which("node")), node_copy)
    run = capture("ssl")
    proc = subprocess.Popen([str(node_copy), "-e", NODE_CLIENT, https_server.url + "/echo", "from-nvm-node"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert out == b"echo:from-nvm-node", err
    events, stderr = run.stop()
    assert stream(events, proc.pid, "send").endswith(b"from-nvm-node")
    assert stream(events, proc.pid, "recv").endswith(b"echo:from-nvm-node")
    assert str(node_copy) not in stderr.split("ready", 1)[1].splitlines()[0]  # found later, on exec
    found = probes("--binary", str(node_copy))["files"][0]
    assert found["kind"] == "openssl-static" and "SSL_write" in found["functions"]


def test_gnutls_client(https_server, capture):
    gnutls_cli = shutil.which("gnutls-cli")
    if not gnutls_cli:
        pytest.fail("gnutls-cli is not installed; scripts/test.sh installs gnutls-bin")
    request = b"GET /bytes/300 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    run = capture("ssl")
    proc = subprocess.Popen([gnutls_cli, "--x509cafile", str(https_server.cert), "-p", str(https_server.port),
                             "127.0.0.1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(request, timeout=60)
    events, _ = run.stop()
    assert b"00000000:abcdefghij" in out, err
    assert stream(events, proc.pid, "send") == request
    received = stream(events, proc.pid, "recv")
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\n" + pattern_bytes(300))
    fns = {e["fn"] for e in events if e["pid"] == proc.pid}
    assert {"gnutls_record_send", "gnutls_record_recv"} <= fns
    probe = probes()["files"]
    assert any(f["kind"] == "gnutls" and "libgnutls.so" in f["path"] for f in probe)


PY_CLIENT = textwrap.dedent(
    """
    import ssl, sys, urllib.request
    url, cafile, body = sys.argv[1:4]
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), context=ctx) as r:
        sys.stdout.write(r.read().decode())
    """
)


def test_python_in_another_mount_namespace(https_server, capture, tmp_path):
    """The process sees its own copy of libssl at the usual path: another inode,
    reachable only through its mount namespace."""
    system_libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    private = tmp_path / "libssl.so.3"
    shutil.copy2(system_libssl, private)
    run = capture("ssl")
    script = f'mount --bind {private} {system_libssl} && exec "$@"'
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                             sys.executable, "-c", PY_CLIENT, https_server.url + "/echo",
                             str(https_server.cert), "from-another-namespace"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert out == b"echo:from-another-namespace", err
    events, stderr = run.stop()
    assert stream(events, proc.pid, "send").endswith(b"from-another-namespace"), stderr
    assert stream(events, proc.pid, "recv").endswith(b"echo:from-another-namespace")
    # At least its libssl; Go and Rust programs that other processes start
    # meanwhile are TLS files too.
    hooked = re.search(r"hooked (\d+) more files while running \(", stderr)
    assert hooked and int(hooked.group(1)) >= 1, stderr


@pytest.mark.parametrize("where", ["deep directory", "long file name"])
def test_libssl_loaded_later_from_a_new_path(where, https_server, capture, tmp_path):
    """A copy of libssl that curl loads after the capture started, from a path
    the kernel's notice must recognise: a short name under a directory longer
    than the notice scans in place, or a name longer than that, which takes
    the scan over the whole path. The copy is another inode: only its own
    hooks can capture its calls."""
    system_libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    if where == "deep directory":
        directory = tmp_path / ("d" * 60) / ("e" * 60)
        directory.mkdir(parents=True)
        copy = directory / "libssl.so.3"
        env = {"LD_LIBRARY_PATH": str(directory)}
    else:
        copy = tmp_path / f"libssl-{'0123456789abcdef' * 4}.so.3"
        env = {"LD_PRELOAD": str(copy)}  # its SONAME is libssl.so.3: curl's need for it is met
    shutil.copy2(system_libssl, copy)
    run = capture("ssl")
    proc = subprocess.Popen(["curl", "-sS", "--http1.1", "--cacert", str(https_server.cert), "--data-binary",
                             "from-a-new-path", https_server.url + "/echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
    out, err = proc.communicate(timeout=60)
    assert out == b"echo:from-a-new-path", err
    with open("/proc/self/maps") as maps:
        assert str(copy) not in maps.read()  # the test's own process never loaded it
    events, stderr = run.stop()
    assert stream(events, proc.pid, "send").endswith(b"from-a-new-path"), stderr
    assert stream(events, proc.pid, "recv").endswith(b"echo:from-a-new-path"), stderr
