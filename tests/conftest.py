import pytest

from support import HttpsServer, RunningCapture, bpf_unavailable_reason


def pytest_collection_modifyitems(config, items):
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config):
    config.addinivalue_line("markers", "bpf: loads real BPF programs (needs root and a BTF kernel)")


@pytest.fixture(autouse=True, scope="session")
def private_analysis_cache(tmp_path_factory):
    """agentsight remembers TLS executables across runs; the tests' throw-away
    copies must not land in this machine's own cache."""
    import os

    os.environ.setdefault("AGENTSIGHT_CACHE_DIR", str(tmp_path_factory.mktemp("analysis-cache")))


@pytest.fixture
def https_server(tmp_path):
    server = HttpsServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def capture(tmp_path):
    """capture(args...) starts agentsight; every capture is stopped or killed at teardown."""
    started: list[RunningCapture] = []

    def start(*args: str, **kwargs) -> RunningCapture:
        run = RunningCapture(list(args), tmp_path / f"capture{len(started)}.jsonl", **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


@pytest.fixture(scope="session")
def distributable_wheel(tmp_path_factory):
    """The wheel scripts/build-wheel.sh makes, built once per run."""
    import subprocess

    from support import REPO

    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-wheel.sh"), str(out)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    from pathlib import Path

    return Path(built.stdout.strip().splitlines()[-1])
