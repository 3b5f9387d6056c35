"""Shared pieces of the engine tests: a small two-class data set and an in-process run."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from cryotorch.cli.classify import run
from cryotorch.simulate.particles import SimulationSettings, simulate_particles
from tests.physics_helpers import blob_volume


def simulate_two_blob_classes(folder: Path, n: int, snr: float, seed: int) -> Path:
    """``n`` particles (box 24, 3 Å) of two blob maps, the second with one extra blob."""
    d = 24
    a = blob_volume(d, (3, 0, -2), 2.0) + blob_volume(d, (-3, 2, 1), 1.5)
    b = a + 1.5 * blob_volume(d, (0, -5, 3), 1.5)
    maps = torch.stack([a, b]).float().numpy()
    return simulate_particles(
        maps, 3.0, folder, SimulationSettings(n_particles=n, snr=snr, seed=seed)
    )


def run_classify(star: Path, out: Path, *overrides: str) -> dict:
    """``cryotorch-classify data.particles=star output_dir=out *overrides``, in process."""
    with initialize_config_module("cryotorch.configs", version_base="1.3"):
        cfg = compose("classify", [f"data.particles={star}", f"output_dir={out}", *overrides])
    return run(cfg)
