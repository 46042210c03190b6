"""The distributable wheel, installed as a user would: a fresh virtualenv
holding only what pip resolves from the wheel's own metadata, and a minimal
Debian root filesystem with no libbpf, libelf, compiler or kernel headers."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import orjson
import pytest

from support import REPO, RunningCapture, stream

TEST_CACHE = Path(os.environ.get("AGENTSIGHT_TEST_CACHE", "/var/cache/agentsight-test"))
ROOTFS_PACKAGES = "python3,python3-venv,curl,ca-certificates"
# What a minimal image may not have; none of it may be needed at run time.
HOST_ONLY_LIBRARIES = ("libbpf.so*", "libelf.so*", "libelf-*.so")


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(distributable_wheel, tmp_path_factory):
    """A new virtualenv (no system site-packages) with the wheel installed by pip."""
    root = tmp_path_factory.mktemp("installed")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(root / "venv")])
    python = root / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(distributable_wheel)])
    # Run from here, outside the checkout: `python -m` from the checkout would
    # import its source tree instead of what was installed.
    (root / "elsewhere").mkdir()
    return python, root / "elsewhere"


def test_wheel_is_manylinux_and_carries_its_libraries(distributable_wheel):
    name = distributable_wheel.name
    assert name.startswith("agentsight-") and "-py3-none-manylinux_" in name and name.endswith("_x86_64.whl")
    members = zipfile.ZipFile(distributable_wheel).namelist()
    assert "agentsight/_native/lib/libbpf.so.1" in members
    for lib in ("libelf", "libz"):
        assert any(m.startswith(f"agentsight.libs/{lib}-") for m in members), (lib, members)
    for obj in (REPO / "prebuilt").glob("*.bpf.o"):
        assert f"agentsight/_native/bpf/{obj.name}" in members
    for asset in (REPO / "agentsight" / "ui" / "web" / "static").iterdir():
        assert f"agentsight/ui/web/static/{asset.name}" in members


def test_every_module_imports_from_a_fresh_venv(installed):
    python, elsewhere = installed
    code = textwrap.dedent("""
        import importlib, pkgutil, agentsight
        names = sorted(m.name for m in pkgutil.walk_packages(agentsight.__path__, "agentsight."))
        for name in names:
            importlib.import_module(name)
        print(agentsight.__file__)
        print(" ".join(names))
        """)
    out = _run([str(python), "-c", code], cwd=elsewhere).stdout.splitlines()
    assert out[0].startswith(str(python.parent.parent)), out[0]
    imported = set(out[1].split())
    in_source = set()
    for path in (REPO / "agentsight").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        in_source.add(".".join(parts))
    in_source.discard("agentsight")
    assert in_source - imported == set()


def test_otlp_without_the_extra_says_what_to_install(installed, tmp_path):
    """The base install has no OpenTelemetry SDK: --otlp says, in one sentence, how to get it."""
    python, elsewhere = installed
    result = subprocess.run([str(python), "-m", "agentsight", "export", str(tmp_path / "s.db"), "--otlp",
                             "http://127.0.0.1:9"], capture_output=True, text=True, cwd=elsewhere, timeout=60)
    assert result.returncode == 2 and result.stderr == (
        "agentsight: OTLP export needs the OpenTelemetry SDK and its OTLP exporter, which are not installed: "
        "pip install 'agentsight[otlp]'\n"), result.stderr


def test_web_ui_serves_its_page_from_the_installed_package(installed, tmp_path):
    """The page and its assets are package data: the installed `serve` finds them."""
    import urllib.request

    from web_support import build_session

    python, elsewhere = installed
    session = tmp_path / "s.db"
    build_session(session, 1)
    proc = subprocess.Popen([str(python), "-m", "agentsight", "serve", str(session), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=elsewhere)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        origin, token = url.split("/?token=")
        for name in ("app.js", "app.css"):
            with urllib.request.urlopen(f"{origin}/static/{name}?token={token}", timeout=30) as r:
                assert r.read() == (REPO / "agentsight" / "ui" / "web" / "static" / name).read_bytes()
        with urllib.request.urlopen(f"{origin}/api/s/0/summary?token={token}", timeout=30) as r:
            assert orjson.loads(r.read())["status"] == "complete"
    finally:
        proc.send_signal(2)
        proc.wait(20)
    assert proc.returncode == 0


@pytest.mark.bpf
def test_probes_runs_from_the_installed_package(installed):
    python, elsewhere = installed
    result = _run([str(python), "-m", "agentsight", "probes", "--json"], cwd=elsewhere)
    found = orjson.loads(result.stdout)
    kinds = {f["kind"] for f in found["files"]}
    assert "openssl" in kinds, found  # the system's libssl, at least
    assert all(f["functions"] for f in found["files"])


def _hide_host_libraries() -> list[str]:
    """A mount namespace wrapper in which the host's libbpf and libelf are empty files."""
    libs = sorted({p for pattern in HOST_ONLY_LIBRARIES for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")
                   for p in glob.glob(f"{d}/{pattern}") if not os.path.islink(p)})
    assert libs, "expected a system libbpf to hide"
    hide = " ".join(f"mount --bind /dev/null {p};" for p in libs)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", hide + ' exec "$@"', "sh"]


@pytest.mark.bpf
def test_wheel_captures_with_host_libraries_hidden(installed, https_server, tmp_path):
    python, elsewhere = installed
    wrapper = _hide_host_libraries()
    probe = _run(wrapper + [str(python), "-c", textwrap.dedent("""
        import ctypes, agentsight.bpf.libbpf as L
        for name in ("libbpf.so.1", "libelf.so.1"):
            try:
                ctypes.CDLL(name); print(name, "visible")
            except OSError:
                print(name, "hidden")
        print(L.lib_path())
        """)], cwd=elsewhere)
    lines = probe.stdout.splitlines()
    assert lines[:2] == ["libbpf.so.1 hidden", "libelf.so.1 hidden"]
    assert lines[2].startswith(str(python.parent.parent)) and lines[2].endswith("_native/lib/libbpf.so.1")

    run = RunningCapture(["ssl", "--comm", "curl"], tmp_path / "out.jsonl", python=str(python), cwd=elsewhere,
                         wrapper=wrapper)
    try:
        curl = subprocess.Popen(["curl", "-sS", "--http1.1", "--cacert", str(https_server.cert), "--data-binary",
                                 "from-the-wheel", https_server.url + "/echo"], stdout=subprocess.PIPE)
        assert curl.communicate(timeout=60)[0] == b"echo:from-the-wheel"
        events, _ = run.stop()
    finally:
        run.kill()
    assert stream(events, curl.pid, "send").endswith(b"from-the-wheel")
    assert stream(events, curl.pid, "recv").endswith(b"echo:from-the-wheel")


def _minimal_rootfs_tarball() -> Path:
    """A Debian minbase root filesystem with only python3, venv, curl and CA
    certificates, built once with mmdebstrap and kept between runs."""
    tarball = TEST_CACHE / f"rootfs-bookworm-minbase-{ROOTFS_PACKAGES.replace(',', '+')}.tar"
    if not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        _run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", "bookworm", str(partial)])
        partial.rename(tarball)
    return tarball


@pytest.fixture(scope="module")
def minimal_root(installed, distributable_wheel, tmp_path_factory):
    """The root filesystem extracted, with agentsight installed into a venv
    inside it by its own pip, from the wheel and the wheels of what its
    metadata requires (fetched on the host: the root has no index configured)."""
    started = time.monotonic()
    tarball = _minimal_rootfs_tarball()
    built = time.monotonic()
    root = tmp_path_factory.mktemp("rootfs")
    _run(["tar", "-xf", str(tarball), "-C", str(root)])
    for absent in ("usr/bin/clang", "usr/include/linux", "usr/lib/x86_64-linux-gnu/libbpf.so.1",
                   "usr/lib/x86_64-linux-gnu/libelf.so.1"):
        assert not (root / absent).exists(), f"the minimal root should not have {absent}"
    wheelhouse = root / "wheelhouse"
    host_python = installed[0]
    _run([str(host_python), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
          "-d", str(wheelhouse), f"{distributable_wheel}[otlp]"])
    inside = _chroot(root)
    _run(inside + ["python3", "-m", "venv", "/opt/agentsight"])
    _run(inside + ["/opt/agentsight/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                   "--find-links", "/wheelhouse", "agentsight[otlp]"])
    print(f"\nminimal root: tarball {'built' if built - started > 1 else 'cached'} in {built - started:.1f} s, "
          f"extracted and installed in {time.monotonic() - built:.1f} s")
    yield root


def _chroot(root: Path) -> list[str]:
    """Runs a command inside `root` in a private mount namespace with the
    host's /proc, /sys (BTF, tracefs) and /dev, from its own /."""
    mounts = " ".join(f"mount --rbind /{d} {root}/{d};" for d in ("proc", "sys", "dev"))
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'{mounts} exec chroot {root} /usr/bin/env -C / "$@"', "sh"]


@pytest.mark.bpf
def test_ssl_in_a_minimal_container(minimal_root, https_server):
    root = minimal_root
    shutil.copy(https_server.cert, root / "server.pem")
    inside = _chroot(root)
    run = RunningCapture(["ssl", "--comm", "curl"], root / "out.jsonl", python="/opt/agentsight/bin/python",
                         cwd=root, wrapper=inside, output_as_seen="/out.jsonl")
    try:
        curl = subprocess.Popen(inside + ["curl", "-sS", "--http1.1", "--cacert", "/server.pem", "--data-binary",
                                          "from-a-minimal-root", https_server.url + "/echo"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = curl.communicate(timeout=60)
        assert out == b"echo:from-a-minimal-root", err
        events, stderr = run.stop()
    finally:
        run.kill()
    sent = [e for e in events if e["type"] == "ssl" and e["dir"] == "send"]
    assert sent, stderr
    # curl ran in the root: its libssl is the root's, found through /proc.
    pid = sent[0]["pid"]
    assert stream(events, pid, "send").startswith(b"POST /echo HTTP/1.1\r\n")
    assert stream(events, pid, "send").endswith(b"from-a-minimal-root")
    assert stream(events, pid, "recv").startswith(b"HTTP/1.1 200")
    assert stream(events, pid, "recv").endswith(b"echo:from-a-minimal-root")


def test_dockerfile_builds_what_the_minimal_root_proves():
    """No Docker engine runs here: the image must at least be made of what
    the minimal root test installs, the same way."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    steps = [line for line in lines if line and not line.startswith("#")]
    assert steps[0] == "FROM debian:bookworm-slim"
    text = "\n".join(steps)
    installed = text.split("apt-get install -y --no-install-recommends", 1)[1].split("\\", 1)[0].split()
    assert set(installed) <= set(ROOTFS_PACKAGES.split(",")) and {"python3", "python3-venv"} <= set(installed)
    assert "python3 -m venv /opt/agentsight" in text
    assert '/opt/agentsight/bin/pip install --no-cache-dir "$(echo /tmp/agentsight-*.whl)[otlp]"' in text
    assert "COPY dist/agentsight-*-manylinux_*_x86_64.whl /tmp/" in text


@pytest.mark.bpf
def test_trace_otlp_in_a_minimal_container(minimal_root):
    """What the DaemonSet runs, from the image's contents: `trace --otlp`
    inside the minimal root, an LLM call made there, its spans received."""
    from llm_mock import LLMMock, Script
    from otlp_receiver import OtlpReceiver

    root = minimal_root
    inside = _chroot(root)
    receiver = OtlpReceiver()
    try:
        with LLMMock() as mock:
            mock.queue = [Script(text="from the image", input_tokens=5, output_tokens=3)]
            shutil.copy(mock.ca_file, root / "llm-ca.pem")
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
            run = RunningCapture(["trace", "--comm", "curl", "--otlp"], root / "otlp.jsonl",
                                 python="/opt/agentsight/bin/python", cwd=root, wrapper=inside,
                                 output_as_seen="/otlp.jsonl", env=env)
            try:
                curl = subprocess.run(inside + [
                    "curl", "-sS", "--http1.1", "--cacert", "/llm-ca.pem", "-H", "content-type: application/json",
                    "--data-binary", '{"model": "local-llama", "messages": [{"role": "user", "content": "hi"}]}',
                    mock.base_url + "/v1/chat/completions"], capture_output=True, timeout=60)
                assert curl.returncode == 0, curl.stderr
                _, stderr = run.stop()
            finally:
                run.kill()
        chats = [s for _, s in receiver.spans() if s["name"] == "chat local-llama"]
        assert len(chats) == 1, stderr
        assert chats[0]["attributes"]["gen_ai.usage.input_tokens"] == 5
        assert "agentsight: otlp: 2 of 2 spans" in stderr, stderr
    finally:
        receiver.close()
