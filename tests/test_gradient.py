"""Gradient training of the class maps (optim=gradient) and the regulariser interface."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify as classify_particles
from cryotorch.engine.gradient import GradientSettings, free_energy, make_optimizer
from cryotorch.engine.posterior import ClassSimilarity, StraightThroughHard
from cryotorch.engine.regularisers import TauSquaredPrior, local_wiener_filter, make_regulariser
from cryotorch.engine.settings import ClassificationSettings, ModelSettings, OptimSettings
from cryotorch.errors import InputError
from cryotorch.evaluation import classification_accuracy
from cryotorch.io import ParticleImages, read_map, read_particles
from tests.run_helpers import run_classify, simulate_two_blob_classes

QUIET = ["logger=none", "logger.quiet=true"]


@pytest.fixture(scope="module")
def small_star(tmp_path_factory) -> Path:
    """1,000 particles of two blob maps (box 24, 3 Å), SNR 0.05."""
    return simulate_two_blob_classes(tmp_path_factory.mktemp("grad"), 1000, 0.05, seed=0)


def truth_of(star: Path) -> np.ndarray:
    return np.loadtxt(star.parent / "true_classes.txt", dtype=np.int64) - 1


def test_free_energy_is_the_marginal_likelihood_at_the_posterior_and_the_max_when_hard():
    scores = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    soft = ClassSimilarity("temperature")(scores, 0.0)
    marginal = torch.logsumexp(scores, 1)
    torch.testing.assert_close(free_energy(scores, soft), marginal)
    # Same gradient as the marginal log-likelihood (the posterior term's is zero there).
    (g1,) = torch.autograd.grad(free_energy(scores, soft).sum(), scores)
    (g2,) = torch.autograd.grad(marginal.sum(), scores)
    torch.testing.assert_close(g1, g2)
    hard = StraightThroughHard()(soft)
    torch.testing.assert_close(free_energy(scores, hard), scores.max(1).values)
    # Any other weights give less (EM's lower bound).
    other = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    assert bool((free_energy(scores, other) <= marginal + 1e-12).all())


def test_free_energy_gradient_stays_finite_where_posteriors_underflow_or_are_hard():
    scores = torch.tensor([[0.0, -200.0], [-150.0, 0.0]], requires_grad=True)  # float32
    assert bool((torch.softmax(scores, 1) == 0).any())  # underflowed
    for hard in (False, True):
        gamma = torch.softmax(scores, 1)
        gamma = StraightThroughHard()(gamma) if hard else gamma
        (grad,) = torch.autograd.grad(free_energy(scores, gamma).sum(), scores)
        assert bool(torch.isfinite(grad).all()), grad


def test_gradient_training_classifies_like_em_and_writes_the_same_outputs(
    small_star: Path, tmp_path: Path
):
    em = run_classify(small_star, tmp_path / "em", *QUIET)
    grad = run_classify(small_star, tmp_path / "grad", *QUIET, "optim=gradient")
    assert grad["accuracy"] >= 0.9, grad
    assert grad["accuracy"] >= em["accuracy"] - 0.03, (grad, em)
    for name in ("posteriors.npy", "posteriors_estep.npy", "class_001.mrc", "class_002_hard.mrc",
                 "particles.star", "checkpoint.pt"):  # fmt: skip
        assert (tmp_path / "grad" / name).is_file(), name
    with open(tmp_path / "grad" / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["gradient"] * GradientSettings().epochs
    post = np.load(tmp_path / "grad" / "posteriors.npy")
    np.testing.assert_allclose(post.sum(1), 1, atol=1e-5)
    assert np.isfinite(read_map(tmp_path / "grad" / "class_001.mrc")[0]).all()


@pytest.mark.parametrize("regulariser", ["tau2", "denoise"])
def test_an_interrupted_gradient_run_resumes_to_the_same_result(small_star: Path, regulariser: str):
    settings = ClassificationSettings(
        model=ModelSettings(
            target_resolution=9, initial_resolution=18, resolution_reach_at=3,
            regulariser=regulariser,
        ),
        optim=OptimSettings(method="gradient", gradient=GradientSettings(epochs=4, batch_size=200)),
        progress=False,
    )  # fmt: skip
    saved = []

    class Killed(Exception):
        pass

    def checkpoint_then_die(state: dict) -> None:
        saved.append(state)
        if len(saved) == 2:
            raise Killed

    with ParticleImages(read_particles(small_star)) as images:
        batcher = BatchMaker(images, 16, torch.device("cpu"))
        whole = classify_particles(batcher, settings)
        with pytest.raises(Killed):
            classify_particles(batcher, settings, checkpoint=checkpoint_then_die)
        resumed = classify_particles(batcher, settings, resume=saved[-1])
    np.testing.assert_array_equal(resumed.posteriors, whole.posteriors)
    torch.testing.assert_close(resumed.maps, whole.maps, rtol=0, atol=0)
    assert [h["iteration"] for h in resumed.history] == [0, 1, 2, 3]


def test_any_torch_optimiser_by_name_and_a_plain_error_otherwise():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer("SGD", params, 0.1), torch.optim.SGD)
    with pytest.raises(ValueError, match="no optimiser 'Adamm'"):
        make_optimizer("Adamm", params, 0.1)


def test_gradient_training_refuses_the_half_set_filter(small_star: Path, tmp_path: Path):
    with pytest.raises(InputError, match="fsc"):
        run_classify(small_star, tmp_path, *QUIET, "optim=gradient", "model.regulariser=fsc")


def test_tau2_penalty_is_the_gaussian_prior_whose_gradient_shrinks_each_shell():
    maps = torch.randn(2, 10, 10, 10, dtype=torch.float64, requires_grad=True)
    prior = TauSquaredPrior(tau2_fudge=4.0)
    penalty = prior.penalty(maps)
    # With τ² each class's own mean power per shell, the penalty is (entries) / (2 T).
    entries = 2 * 10 * 10 * 6  # k x the rfft_3d half grid (shells past the corner clamp)
    assert float(penalty) == pytest.approx(entries / 8, rel=1e-9)
    (grad,) = torch.autograd.grad(penalty, maps)
    # τ² held fixed, the penalty is quadratic in the maps: <∇P, V> = 2 P (so -∇P shrinks V).
    assert float((grad * maps).sum()) == pytest.approx(2 * float(penalty), rel=1e-9)


def test_local_wiener_filter_is_scipys_and_denoises():
    signal = pytest.importorskip("scipy.signal")
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(1, 24, 24, 24, dtype=torch.float64)
    clean[0, 8:16, 8:16, 8:16] = 1
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    filtered = local_wiener_filter(noisy, 3)
    np.testing.assert_allclose(filtered[0].numpy(), signal.wiener(noisy[0].numpy(), 3), atol=1e-12)
    assert float(((filtered - clean) ** 2).mean()) < 0.2 * float(((noisy - clean) ** 2).mean())
    assert make_regulariser("denoise").filter_maps(noisy, torch.ones(24, 24, 24)).shape == (
        1, 24, 24, 24,
    )  # fmt: skip


def test_trained_noise_reaches_the_residual_estimate(small_star: Path):
    """With the Gaussian normaliser, training the noise power finds what EM computes in closed
    form from the residuals (without it the noise would grow without bound)."""
    powers = {}
    for train in (False, True):
        gradient = GradientSettings(epochs=6, batch_size=200, train_noise=train)
        settings = ClassificationSettings(
            model=ModelSettings(target_resolution=9, initial_resolution=9),
            optim=OptimSettings(method="gradient", gradient=gradient),
            progress=False,
        )
        states = []
        with ParticleImages(read_particles(small_star)) as images:
            result = classify_particles(
                BatchMaker(images, 16, torch.device("cpu")), settings, checkpoint=states.append
            )
        accuracy = classification_accuracy(result.posteriors.argmax(1), truth_of(small_star), 2)
        assert accuracy > 0.8, (train, accuracy)  # it classifies either way
        powers[train] = states[-1]["noise_power"][0, 1:7]  # shells in use
    ratio = powers[True] / powers[False]
    assert bool(((ratio > 0.8) & (ratio < 1.25)).all()), ratio
