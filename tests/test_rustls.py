"""rustls in Rust binaries, hooked at the AEAD layer under it: uv from PyPI
(stripped, rustls 0.23 on aws-lc-rs) against a local HTTPS package index,
and maturin from PyPI (rustls 0.23 on ring), as shipped and stripped,
uploading to a local HTTPS package index; over TLS 1.3, TLS 1.2 with
AES-GCM and TLS 1.2 with ChaCha20-Poly1305."""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import REPO, pattern_bytes, stream

pytestmark = pytest.mark.bpf

AEAD_FUNCTIONS = {"EVP_AEAD_CTX_init", "EVP_AEAD_CTX_init_with_direction", "EVP_AEAD_CTX_seal",
                  "EVP_AEAD_CTX_seal_scatter", "EVP_AEAD_CTX_open"}


def make_ca_and_server_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed, for 127.0.0.1: (ca, chain, key).
    rustls, unlike OpenSSL, refuses a CA certificate as the server's own."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentsight test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "chain.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def index_page(path: str, padding: int) -> bytes:
    """A simple-index page naming its own path, with no files, and `padding`
    bytes of a comment to make it span many TLS records."""
    return (b"<!DOCTYPE html><html><body><!-- index of " + path.encode() + b" -->\n<!-- "
            + pattern_bytes(padding) + b" --></body></html>\n")


# Server settings for each TLS version and cipher the clients are made to use.
TLS_VARIANTS = {
    "tls1.3": (ssl.TLSVersion.TLSv1_3, None),
    "tls1.2-aes-gcm": (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    "tls1.2-chacha20": (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305"),
}


class _IndexHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    # Head and body in one write: a client that stops reading after the
    # head (maturin) still receives the body in the same records.
    wbufsize = 1 << 20

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.uploads.append(body)
        reply = b"uploaded %d bytes\n" % len(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):
        body = index_page(self.path, self.server.padding)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class IndexServer:
    """A package index over HTTPS on 127.0.0.1, certificate signed by a test CA."""

    def __init__(self, directory: Path, tls: str = "tls1.3"):
        self.tls = tls
        self.ca, chain, key = make_ca_and_server_certificate(directory)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _IndexHandler)
        self.httpd.daemon_threads = True
        self.httpd.padding = 0
        self.httpd.uploads = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        version, cipher = TLS_VARIANTS[tls]
        ctx.minimum_version = ctx.maximum_version = version
        if cipher:
            ctx.set_ciphers(cipher)
        ctx.load_cert_chain(chain, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.origin = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.origin + "/simple/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(params=sorted(TLS_VARIANTS))
def index_server(request, tmp_path):
    server = IndexServer(tmp_path, request.param)
    yield server
    server.close()


@pytest.fixture(scope="module")
def uv() -> str:
    path = shutil.which("uv", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.fail("uv is not installed next to this Python; the [test] extra installs it")
    return os.path.realpath(path)


def probes(*args: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-m", "agentsight", "probes", "--json", *args],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def analysed(uv, tmp_path) -> dict:
    """An analysis cache that knows uv already, as after an earlier run: uv
    is hooked when agentsight starts. Returns the environment to use."""
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    probes("--binary", uv, env=env)
    return env


def test_uv_aead_functions_are_located(uv, tmp_path):
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    (found,) = probes("--binary", uv, env=env)["files"]
    assert found["kind"] == "rustls-aws-lc"
    assert found["method"].startswith("aead.c error reason codes")
    assert set(found["functions"]) == AEAD_FUNCTIONS
    offsets = list(found["functions"].values())
    assert len(set(offsets)) == len(offsets)
    # Every offset is a function entry of the unwind table, as binutils' own
    # reading of .eh_frame lists them.
    assert set(offsets) <= _unwind_entries(uv)


def _run_uv(uv: str, index: IndexServer, tmp_path: Path, *packages: str) -> subprocess.Popen:
    env = dict(os.environ, SSL_CERT_FILE=str(index.ca), UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_NO_CONFIG="1",
               HOME=str(tmp_path))
    proc = subprocess.Popen([uv, "pip", "install", "--dry-run", "--no-cache", "--python", sys.executable,
                             "--index-url", index.url, *packages], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    # No package has any version: uv says so, after reading the index pages.
    assert "there are no versions of" in err, err
    return proc


def _exchanges(events: list[dict], pid: int) -> dict[int, tuple[bytes, bytes]]:
    """Per connection of pid: (bytes sent, bytes received)."""
    conns: dict[int, tuple[bytearray, bytearray]] = {}
    for e in events:
        if e["type"] == "ssl" and e["pid"] == pid and e["dir"] in ("send", "recv"):
            sent, received = conns.setdefault(e["conn"], (bytearray(), bytearray()))
            (sent if e["dir"] == "send" else received).extend(e["data"].encode("utf-8", "surrogatepass"))
    return {conn: (bytes(s), bytes(r)) for conn, (s, r) in conns.items()}


def test_uv_request_and_response_are_captured(uv, index_server, analysed, capture, tmp_path):
    name = f"no-such-package-{uuid.uuid4().hex[:12]}"
    run = capture("ssl", env=analysed)
    proc = _run_uv(uv, index_server, tmp_path, name)
    events, stderr = run.stop()
    assert f"{uv} (rustls-aws-lc)" in _ready_line(stderr)
    mine = [e for e in events if e["pid"] == proc.pid and e["type"] == "ssl"]
    data = [e for e in mine if e["dir"] in ("send", "recv")]
    assert data, f"nothing captured from uv (pid {proc.pid}): {stderr}"
    sent, received = stream(events, proc.pid, "send"), stream(events, proc.pid, "recv")
    assert sent.startswith(f"GET /simple/{name}/ HTTP/1.1\r\n".encode())
    assert sent.endswith(b"\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == index_page(f"/simple/{name}/", 0)
    for e in data:
        assert e["fn"] in ({"EVP_AEAD_CTX_seal", "EVP_AEAD_CTX_seal_scatter"} if e["dir"] == "send"
                           else {"EVP_AEAD_CTX_open"})
        assert len(e["data"].encode()) == e["len"] == e["ret"] and e["truncated"] == 0 and e["gap"] == 0
    (conn,) = {e["conn"] for e in data}
    # The connection ends when uv closes its socket.
    assert [(e["conn"], e["fn"]) for e in mine if e["dir"] == "close"] == [(conn, "close")]
    assert "dropped" not in stderr and "lost in the ring buffer: 0 records" in stderr


def test_uv_many_records_and_connections_keep_their_bytes_and_pairing(uv, index_server, analysed, capture,
                                                                       tmp_path):
    """Pages of 200 KiB (thirteen records each) for several packages at once:
    every response is reassembled byte for byte, on the connection whose
    request asked for it."""
    index_server.httpd.padding = 200 << 10
    names = [f"pkg-{i}-{uuid.uuid4().hex[:8]}" for i in range(4)]
    run = capture("ssl", env=analysed)
    proc = _run_uv(uv, index_server, tmp_path, *names)
    events, stderr = run.stop()
    exchanges = _exchanges(events, proc.pid)
    asked = {}
    for conn, (sent, received) in exchanges.items():
        paths = re.findall(rb"GET (/simple/[^ ]+/) HTTP/1.1\r\n", sent)
        assert paths, f"connection {conn} sent no request: {sent[:200]!r}"
        # Keep-alive answers come back in order on their connection.
        pos = 0
        for path in paths:
            page = index_page(path.decode(), 200 << 10)
            start = received.find(b"\r\n\r\n", pos)
            assert received[start + 4:start + 4 + len(page)] == page, (conn, path)
            pos = start + 4 + len(page)
            asked[path.decode()] = conn
        assert pos == len(received)
    assert set(asked) == {f"/simple/{n}/" for n in names}
    assert "dropped" not in stderr and "lost in the ring buffer: 0 records" in stderr


RING_FUNCTIONS = {"aes_gcm_init_128", "aes_gcm_init_256", "aes_gcm_seal", "aes_gcm_open",
                  "chacha20_poly1305_init", "chacha20_poly1305_seal", "chacha20_poly1305_open"}


@pytest.fixture(scope="module", params=["as-shipped", "stripped"])
def maturin(request, tmp_path_factory) -> str:
    """maturin from PyPI: a static-pie Rust program with rustls on ring,
    shipped with its symbols; and the same program stripped, as agents ship."""
    path = shutil.which("maturin", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.fail("maturin is not installed next to this Python; the [test] extra installs it")
    path = os.path.realpath(path)
    if request.param == "as-shipped":
        return path
    stripped = tmp_path_factory.mktemp("maturin") / "maturin"
    shutil.copy(path, stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    return str(stripped)


def test_maturin_ring_functions_are_located(maturin, tmp_path):
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    (found,) = probes("--binary", maturin, env=env)["files"]
    assert found["kind"] == "rustls-ring"
    assert found["method"].startswith("ring's Algorithm statics")
    assert set(found["functions"]) == RING_FUNCTIONS
    # The build shipped with symbols names each function: the same offsets.
    from elftools.elf.elffile import ELFFile

    shipped = os.path.realpath(shutil.which("maturin", path=os.path.dirname(sys.executable)))
    with open(shipped, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        to_offset = text["sh_offset"] - text["sh_addr"]
        symbols = {}
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            m = re.search(r"4ring4aead9algorithm\d+(\w+)$", sym.name)
            if m and sym["st_info"]["type"] == "STT_FUNC":
                symbols[m.group(1)] = sym["st_value"] + to_offset
    assert {name: symbols[name] for name in RING_FUNCTIONS} == found["functions"]


def _wheel(directory: Path, payload: bytes) -> Path:
    """A small wheel whose payload is stored uncompressed: its bytes travel
    verbatim in the upload."""
    import hashlib
    import zipfile

    path = directory / "agentsight_probe-0.1-py3-none-any.whl"
    files = {"agentsight_probe/payload.bin": payload,
             "agentsight_probe-0.1.dist-info/METADATA":
                 b"Metadata-Version: 2.1\nName: agentsight-probe\nVersion: 0.1\n",
             "agentsight_probe-0.1.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: agentsight-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append("agentsight_probe-0.1.dist-info/RECORD,,")
        z.writestr("agentsight_probe-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_maturin_upload_request_and_response_are_captured(maturin, index_server, capture, tmp_path):
    env = dict(os.environ, AGENTSIGHT_CACHE_DIR=str(tmp_path / "cache"))
    probes("--binary", maturin, env=env)  # analysed before: hooked from the start
    payload = os.urandom(48 << 10)  # several records, not valid UTF-8
    wheel = _wheel(tmp_path, payload)
    run = capture("ssl", env=env)
    proc = subprocess.Popen([maturin, "upload", "--repository-url", index_server.origin + "/legacy/",
                             "-u", "agentsight", "-p", "test-password", str(wheel)],
                            env=dict(os.environ, MATURIN_CA_BUNDLE=str(index_server.ca), HOME=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events, stderr = run.stop()
    (uploaded,) = index_server.httpd.uploads
    assert payload in uploaded
    sent, received = stream(events, proc.pid, "send"), stream(events, proc.pid, "recv")
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /legacy/ HTTP/1.1\r\n"), stderr
    # Captured, then masked in the output like every other stack's.
    assert b"\r\nauthorization: " in head.lower()
    assert base64.b64encode(b"agentsight:test-password") not in sent
    assert body == uploaded
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"uploaded %d bytes\n" % len(uploaded))
    mine = [e for e in events if e["pid"] == proc.pid and e["type"] == "ssl"]
    data = [e for e in mine if e["dir"] in ("send", "recv")]
    cipher = "chacha20_poly1305" if index_server.tls.endswith("chacha20") else "aes_gcm"
    assert {e["fn"] for e in data} == {f"{cipher}_seal", f"{cipher}_open"}
    (conn,) = {e["conn"] for e in data}
    assert [(e["conn"], e["fn"]) for e in mine if e["dir"] == "close"] == [(conn, "close")]
    for e in data:
        raw = e["data"].encode("utf-8", "surrogatepass") if "data" in e else None
        if raw is not None:
            assert len(raw) == e["len"]
        assert e["truncated"] == 0 and e["gap"] == 0
    assert "dropped" not in stderr and "lost in the ring buffer: 0 records" in stderr


def test_uv_exchange_is_analysed_by_trace(uv, analysed, capture, tmp_path):
    """The analyzers take AEAD-layer events as they take OpenSSL's: each of
    uv's index requests becomes one http event with its answer."""
    index = IndexServer(tmp_path)
    try:
        name = f"traced-{uuid.uuid4().hex[:10]}"
        run = capture("trace", "--no-open", env=analysed)
        proc = _run_uv(uv, index, tmp_path, name)
        events, stderr = run.stop()
    finally:
        index.close()
    exchanges = [e for e in events if e["type"] == "http" and e["pid"] == proc.pid]
    assert [(e["method"], e["path"], e["status"]) for e in exchanges] == [("GET", f"/simple/{name}/", 200)], stderr
    assert exchanges[0]["response_size"] == len(index_page(f"/simple/{name}/", 0))
    assert not exchanges[0].get("incomplete")


def _ready_line(stderr: str) -> str:
    """The `ready` line (notes about other programs running here may come first)."""
    return next(line for line in stderr.splitlines() if line.startswith("ready"))


def _unwind_entries(path: str) -> set[int]:
    """File offsets of the functions .eh_frame describes, read by readelf."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        to_offset = text["sh_offset"] - text["sh_addr"]
    out = subprocess.run(["readelf", "--debug-dump=frames", path], capture_output=True, text=True, check=True).stdout
    return {int(m.group(1), 16) + to_offset for m in re.finditer(r" FDE cie=\S+ pc=([0-9a-f]+)\.\.", out)}
