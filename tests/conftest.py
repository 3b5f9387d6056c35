"""Shared fixtures and the skip rules for the ``relion`` and ``gpu`` markers.

``CRYOTORCH_FAKE_CUDA=1`` runs the ``gpu`` tests on an emulated CUDA device (tests/fake_cuda.py):
their device handling, not CUDA's numerics."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from cryotorch.io.example import write_example_star

if os.environ.get("CRYOTORCH_FAKE_CUDA") == "1":
    from tests import fake_cuda

    fake_cuda.install()

RELION_PROGRAMS = ("relion_project", "relion_reconstruct")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [p for p in RELION_PROGRAMS if shutil.which(p) is None]
    skip_relion = pytest.mark.skip(
        reason=f"RELION not installed ({', '.join(missing)} not on PATH; "
        "`apt-get install -y relion` provides them)"
    )
    skip_gpu = pytest.mark.skip(
        reason="no CUDA device (torch.cuda.is_available() is False); "
        "tests/test_fake_cuda.py runs it on an emulated one"
    )
    for item in items:
        if "relion" in item.keywords and missing:
            item.add_marker(skip_relion)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def example_star(tmp_path: Path) -> Path:
    """A RELION 3.1 STAR with 200 particles in two stacks and two optics groups."""
    return write_example_star(tmp_path / "example")
