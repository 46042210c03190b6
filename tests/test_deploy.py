"""The fleet deployment files, checked offline (no cluster here): the
DaemonSet against the Kubernetes API schemas that kubernetes-validate ships
(strict: an unknown or misspelt field fails), what it must hold for
agentsight to run, and the systemd unit with systemd-analyze."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import kubernetes_validate
import orjson
import pytest
import yaml

from agentsight.cli import build_parser
from support import REPO

DAEMONSET = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
UNIT = REPO / "deploy" / "systemd" / "agentsight.service"
# appArmorProfile in the securityContext is there from 1.30 on.
KUBERNETES_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"]


def _documents():
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifest_matches_the_kubernetes_schema(version):
    documents = _documents()
    assert [d["kind"] for d in documents] == ["Namespace", "DaemonSet"]
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_schema_check_catches_mistakes():
    """The check is not a formality: a misspelt field fails it."""
    daemonset = _documents()[1]
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


def test_daemonset_holds_what_agentsight_needs():
    daemonset = _documents()[1]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert set(security["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}
    assert security["capabilities"]["drop"] == ["ALL"] and security["runAsUser"] == 0
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing", "/var/cache/agentsight"):
        assert volumes[mounts[path]["name"]] == path
    assert mounts["/sys/kernel/btf"]["readOnly"] is True
    # The arguments are agentsight's own: the image's entrypoint is `agentsight`.
    assert '["agentsight"]' in (REPO / "Dockerfile").read_text()
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.otlp, args.output) == ("trace", "", "/dev/null")
    env = {e["name"]: e for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://")
    assert ".svc" in env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]  # a collector Service
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "host.name=$(NODE_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]


def test_systemd_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "scripts/test.sh installs systemd"
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0] == "/opt/agentsight/bin/agentsight"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.otlp) == ("trace", "")
    # systemd-analyze wants the program to exist: this interpreter stands in for the venv's script.
    unit = tmp_path / "agentsight.service"
    unit.write_text(text.replace(argv[0], f"{sys.executable} -m agentsight"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    bounding = next(line for line in text.splitlines() if line.startswith("CapabilityBoundingSet="))
    assert set(bounding.split("=", 1)[1].split()) == {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}


@pytest.mark.bpf
def test_trace_captures_with_only_the_capabilities_the_unit_gives(capture, https_server, tmp_path):
    """Where tracefs is not mounted, too: the unit's set must let agentsight mount it (privately)."""
    bounding = next(line for line in UNIT.read_text().splitlines() if line.startswith("CapabilityBoundingSet="))
    keep = ",".join("+" + c.removeprefix("CAP_").lower() for c in bounding.split("=", 1)[1].split())
    raw = tmp_path / "raw.jsonl"
    without_tracefs = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; "
                       'exec "$@"', "sh"]
    run = capture("trace", "--raw", str(raw), wrapper=[*without_tracefs, "setpriv", f"--bounding-set=-all,{keep}"])
    marker = tmp_path / "marker"
    marker.write_text("x")
    curl = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", str(https_server.cert), https_server.url + "/"],
                          capture_output=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    _, stderr = run.stop()
    assert "tracefs is not mounted: mounting it" in stderr  # the case the unit's SYS_ADMIN is for
    events = [orjson.loads(line) for line in raw.read_bytes().splitlines()]
    assert any(e["type"] == "open" and e["path"] == str(marker) for e in events), stderr
    sent = b"".join(e["data"].encode() for e in events if e["type"] == "ssl" and e["comm"] == "curl"
                    and e["dir"] == "send")
    assert sent.startswith(b"GET / HTTP/1.1\r\n"), stderr
