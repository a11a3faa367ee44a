"""The code base passes its lint configuration (ruff, set in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (bash tools/setup.sh installs it)")
def test_ruff_is_clean():
    proc = subprocess.run(["ruff", "check", "--no-cache", "python", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
