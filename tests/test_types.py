"""The package type-checks: mypy, with the settings of pyproject.toml's ``[tool.mypy]``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_errors() -> None:
    pytest.importorskip("mypy")
    # From the repository root, so that mypy reads pyproject.toml (files = ["cryotorch"]).
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
