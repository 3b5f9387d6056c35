"""An ordinary install: the wheel carries the configs and the built-in structures, and its
commands run from a fresh virtual environment with no source tree on the path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from setuptools import find_packages
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    """pyproject.toml lists the packages (configs/ is mapped in as cryotorch.configs): a new
    subpackage left out of the list would be missing from the wheel."""
    listed = read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]["packages"]
    found = find_packages(str(REPO), include=["cryotorch*"])
    assert sorted(listed) == sorted([*found, "cryotorch.configs"])


@pytest.mark.slow
def test_wheel_installs_and_its_commands_run(tmp_path: Path):
    """scripts/check_wheel.sh: build, install into a new venv, run every command there."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "check_wheel.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    checks = result.stdout
    assert result.returncode == 0, checks + result.stderr[-3000:]
    assert "cryotorch imported from the venv" in checks
    assert "round trip OK" in checks
    accuracy = re.search(r"accuracy against the true classes ([\d.]+) %", checks)
    assert accuracy and float(accuracy.group(1)) >= 95.0, checks
