"""The package type-checks: mypy over agentsight/, with the settings in
pyproject.toml (stricter for the analyzers and the event types)."""
from __future__ import annotations

import subprocess
import sys

from support import REPO


def test_package_type_checks():
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found" in run.stdout
