"""Data parallel over processes: torchrun with 2 CPU processes (gloo) against 1 process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed

from cryotorch.io import read_map
from tests.run_helpers import simulate_two_blob_classes

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no torch.distributed with gloo",
)

ARGS = [
    "logger=none",
    "model.target_resolution=9",
    "model.regulariser=fsc",
    "model.contrast=optimal",
    "optim.batch_per_class=100",
    "optim.max_iterations=5",
    "posterior.similarity.anneal_end=4",
]


def run(*launcher: str, star: Path, out: Path) -> str:
    command = [*launcher, "cryotorch.cli.classify", f"data.particles={star}", f"output_dir={out}"]
    result = subprocess.run(command + ARGS, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_processes_on_gloo_give_the_one_process_result(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path / "data", 600, 0.2, seed=3)
    one = run(sys.executable, "-m", star=star, out=tmp_path / "one")
    two = run(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", star=star, out=tmp_path / "two",
    )  # fmt: skip
    assert one.count("\nit ") == two.count("\nit ")  # same number of iterations
    p1, p2 = (
        np.load(tmp_path / "one" / "posteriors.npy"),
        np.load(tmp_path / "two" / "posteriors.npy"),
    )
    np.testing.assert_array_equal(p1.argmax(1), p2.argmax(1))
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    for k in (1, 2):
        a = read_map(tmp_path / "one" / f"class_{k:03d}.mrc")[0]
        b = read_map(tmp_path / "two" / f"class_{k:03d}.mrc")[0]
        assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert (tmp_path / "two" / "particles.star").read_text().count("\n") == (
        tmp_path / "one" / "particles.star"
    ).read_text().count("\n")
