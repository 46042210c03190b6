"""Test helpers: a local HTTPS server and a running agentsight capture.

Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent


def bpf_unavailable_reason() -> str | None:
    """Why BPF tests cannot run here, or None. On the project's machines it is always None."""
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF"
    return None


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def pattern_bytes(n: int) -> bytes:
    """n bytes of a non-repeating-looking ASCII pattern, so offsets can be checked."""
    line = b"".join(b"%08d:abcdefghijklmnopqrstuvwxyz\n" % i for i in range(n // 36 + 1))
    return line[:n]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every keep-alive round trip waits for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _reply(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/echo":
            self._reply(b"echo:" + body)
        else:
            self.send_error(404)

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            self._reply(pattern_bytes(int(self.path.split("/")[2])), "application/octet-stream")
        else:
            self._reply(b"hello from the test server\n")


class HttpsServer:
    """Threaded HTTPS/1.1 server on 127.0.0.1 with a fresh self-signed cert."""

    def __init__(self, directory: Path):
        self.cert, self.key = make_certificate(directory)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RunningCapture:
    """`python -m agentsight ARGS -o FILE` in the background, ready to be stopped."""

    def __init__(self, args: list[str], output: Path, python: str = sys.executable,
                 cwd: Path = REPO, wrapper: list[str] | None = None, env: dict | None = None,
                 output_as_seen: str | None = None):
        """`output_as_seen`: the output's path for agentsight, when it runs
        under another root (a chroot) than the test that reads `output`."""
        self.output = output
        cmd = (wrapper or []) + [python, "-m", "agentsight", *args, "-o", output_as_seen or str(output)]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.proc.kill()
            raise AssertionError(f"agentsight never became ready: {self.stderr_lines}")
        if self.proc.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"agentsight exited at start ({self.proc.returncode}): {''.join(self.stderr_lines)}")

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if line.startswith("ready"):
                self._ready.set()
        self._ready.set()

    def stop(self) -> tuple[list[dict], str]:
        """SIGINT, wait, and return (events, stderr)."""
        if self.proc.poll() is None:
            # Let the consumer's timer drain records still below the wake-up threshold.
            time.sleep(0.3)
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        assert self.proc.returncode == 0, "".join(self.stderr_lines)
        events = [orjson.loads(line) for line in self.output.read_bytes().splitlines() if line.strip()]
        return events, "".join(self.stderr_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stream(events: list[dict], pid: int, direction: str) -> bytes:
    """The plaintext a process sent or received, in event order."""
    import base64

    out = bytearray()
    for ev in events:
        if ev["type"] == "ssl" and ev["pid"] == pid and ev["dir"] == direction:
            out += ev["data"].encode() if "data" in ev else base64.b64decode(ev["data_b64"])
    return bytes(out)


# --- Bun builds from the npm registry, kept outside the checkout ---

BUN_CACHE = Path(os.environ.get("AGENTSIGHT_TEST_BUN_CACHE", "/var/cache/agentsight-test/bun-builds"))


def bun_build(variant: str, version: str) -> Path:
    """The `bun` executable of @oven/bun-linux-VARIANT@VERSION, fetched with
    `npm pack` into BUN_CACHE on first use."""
    import tarfile

    binary = BUN_CACHE / "bin" / f"oven-bun-linux-{variant}-{version}" / "bun"
    if binary.exists():
        return binary
    tgz = BUN_CACHE / f"oven-bun-linux-{variant}-{version}.tgz"
    if not tgz.exists():
        BUN_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", f"@oven/bun-linux-{variant}@{version}"], cwd=BUN_CACHE,
                       check=True, stdout=subprocess.DEVNULL, timeout=600)
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        member = tar.getmember("package/bin/bun")
        member.name = "bun"
        tar.extract(member, binary.parent)
    return binary
