"""The oracle (issue 23): the Bayes posterior of simulated particles under the model that made
them, checked for what a Bayes posterior must be: calibrated, perfect on noise-free data, and
at least as accurate as a classification that had to learn the maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.noise import NoiseModel
from cryotorch.errors import InputError
from cryotorch.evaluation import SIMULATION_RECORD, classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_map, read_particles
from cryotorch.oracle import oracle_posteriors
from cryotorch.physics.projector import prepare_volumes
from cryotorch.physics.slices import extract_central_slices
from tests.run_helpers import run_classify, simulate_two_blob_classes


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 particles of two blob maps at SNR 0.01: the classes overlap."""
    return simulate_two_blob_classes(tmp_path_factory.mktemp("hard"), 2000, 0.01, seed=7)


def test_the_true_residual_has_the_noise_power_the_oracle_assumes(hard: Path):
    """X - CTF·shift·P(V_true) of each particle is its noise alone: its power per Fourier
    pixel, shell by shell, is d² σ² (σ from simulation.json), the oracle's noise model."""
    record = json.loads((hard.parent / SIMULATION_RECORD).read_text())
    maps = torch.stack([torch.from_numpy(read_map(hard.parent / m)[0]).double()
                        for m in record["maps"]])  # fmt: skip
    d, truth = maps.shape[-1], read_true_classes(hard.parent)
    volumes = prepare_volumes(maps, record["pad"])
    with ParticleImages(read_particles(hard)) as images:
        batch = BatchMaker(images, d, torch.device("cpu"), torch.float64, record["pad"])(
            np.arange(1000)
        )
    model = batch.ctf[:, None] * extract_central_slices(volumes, batch.geometry)
    model = model * batch.shift[:, None]
    residual = batch.spectra - model[torch.arange(1000), torch.as_tensor(truth[:1000])]
    noise = NoiseModel(torch.ones(1, d // 2 + 1, dtype=torch.float64))
    power = noise.shell_sums(residual.abs() ** 2).sum(0) / (1000 * noise.pixels_per_shell())
    expected = d * d * record["noise_sigma"] ** 2
    np.testing.assert_allclose(power[1 : d // 2].numpy(), expected, rtol=0.05)


def test_the_oracle_is_calibrated(hard: Path):
    """A Bayes posterior is calibrated: the mean probability of the chosen class is the
    fraction chosen right (to the sampling error of 2,000 particles), and the posteriors
    sum to 1. A noise power off by a factor of 2 breaks this (checked)."""
    oracle = oracle_posteriors(hard)
    np.testing.assert_allclose(oracle.posteriors.sum(1), 1, atol=1e-12)
    assert 0.6 < oracle.accuracy < 0.99  # a hard set: the classes overlap
    right = oracle.posteriors.argmax(1) == oracle.truth
    assert oracle.posteriors.max(1).mean() == pytest.approx(right.mean(), abs=0.02)


def test_no_classification_beats_the_oracle(hard: Path, tmp_path: Path):
    """cryotorch's defaults, which have to learn the maps, classify no better than the oracle
    (up to the sampling error: the oracle is best on average, not on every particle set)."""
    summary = run_classify(hard, tmp_path / "run", "logger=none", "logger.quiet=true")
    oracle = oracle_posteriors(hard)
    assert summary["accuracy"] <= oracle.accuracy + 0.01, (summary["accuracy"], oracle.accuracy)
    assert oracle.gap(summary["accuracy"]) == pytest.approx(
        100 * (oracle.accuracy - summary["accuracy"])
    )


def test_noise_free_particles_are_all_assigned_right(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path, 300, float("inf"), seed=1)
    oracle = oracle_posteriors(star)
    assert oracle.accuracy == 1.0 and np.isfinite(oracle.posteriors).all()
    assert classification_accuracy(oracle.posteriors.argmax(1), oracle.truth, 2) == 1.0


def test_particles_without_a_simulation_record_are_refused(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path, 50, 1.0, seed=1)
    (tmp_path / SIMULATION_RECORD).unlink()
    with pytest.raises(InputError, match=r"simulation\.json: not found: the oracle needs"):
        oracle_posteriors(star)


def test_a_resolution_limit_costs_the_oracle_and_nyquist_is_none(hard: Path):
    """Limited to the shells to Nyquist (2 pixels) the oracle is the oracle; limited to 10 Å it
    has less to go on, so its posteriors are less sure."""
    full = oracle_posteriors(hard)
    record = json.loads((hard.parent / "simulation.json").read_text())
    nyquist = oracle_posteriors(hard, max_resolution=2 * record["pixel_size_angstrom"])
    np.testing.assert_allclose(nyquist.posteriors, full.posteriors)
    coarse = oracle_posteriors(hard, max_resolution=10.0)
    assert coarse.posteriors.max(1).mean() < full.posteriors.max(1).mean()
