"""Arize Phoenix, a real OTLP trace backend, for the OpenTelemetry tests.

Phoenix is large (about 850 MB installed), so it lives in its own virtualenv
outside the checkout, built the first time it is needed and kept between
runs (AGENTSIGHT_TEST_CACHE, default /var/cache/agentsight-test). It is
pinned: a new version gets a new virtualenv. It listens on 127.0.0.1 only,
with its telemetry off, and receives OTLP/HTTP at /v1/traces and OTLP/gRPC
on its gRPC port. Spans are read back through its REST API.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PHOENIX_VERSION = "20.26.1"
CACHE = Path(os.environ.get("AGENTSIGHT_TEST_CACHE", "/var/cache/agentsight-test"))
VENV = CACHE / f"phoenix-venv-{PHOENIX_VERSION}"
READY_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_venv() -> tuple[Path, float]:
    """The Phoenix virtualenv, built if missing; (its phoenix script, seconds spent building)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    done = VENV / ".complete"
    started = time.monotonic()
    with open(CACHE / "phoenix-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it
        if not done.exists():
            shutil.rmtree(VENV, ignore_errors=True)
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
            built = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                                    "--disable-pip-version-check", f"arize-phoenix=={PHOENIX_VERSION}"],
                                   capture_output=True, text=True, timeout=1500)
            if built.returncode != 0:
                raise RuntimeError(f"installing arize-phoenix failed: {built.stderr[-2000:]}")
            done.write_text(PHOENIX_VERSION)
    return VENV / "bin" / "phoenix", time.monotonic() - started


class Phoenix:
    """`phoenix serve` on free loopback ports, in its own working directory."""

    def __init__(self, workdir: Path):
        self.script, self.build_seconds = ensure_venv()
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"http://127.0.0.1:{self.grpc_port}"
        env = dict(os.environ, PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(self.port),
                   PHOENIX_GRPC_PORT=str(self.grpc_port), PHOENIX_WORKING_DIR=str(workdir),
                   PHOENIX_TELEMETRY_ENABLED="false")
        for name in list(env):
            if name.startswith("OTEL_"):
                del env[name]  # Phoenix traces nothing of its own
        self.log = open(workdir / "phoenix.log", "wb")
        started = time.monotonic()
        self.proc = subprocess.Popen([str(self.script), "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"phoenix exited ({self.proc.returncode}): "
                                   f"{(workdir / 'phoenix.log').read_text()[-2000:]}")
            try:
                self.get("/v1/projects")
                break
            except OSError:
                if time.monotonic() - started > READY_SECONDS:
                    self.close()
                    raise RuntimeError("phoenix did not start in time") from None
                time.sleep(0.5)
        self.start_seconds = time.monotonic() - started

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def project_id(self, name: str) -> str | None:
        for p in self.get("/v1/projects?limit=1000")["data"]:
            if p["name"] == name:
                return p["id"]
        return None

    def spans(self, project: str, expect: int = 1, timeout: float = 30.0) -> list[dict]:
        """Every span of a project, once at least `expect` have been stored."""
        deadline = time.monotonic() + timeout
        while True:
            found: list[dict] = []
            pid = self.project_id(project)
            if pid is not None:
                cursor = None
                while True:
                    page = self.get(f"/v1/projects/{pid}/spans?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
                    found += page["data"]
                    cursor = page.get("next_cursor")
                    if not cursor:
                        break
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()
