"""The classification engine: posterior layers, schedules, presets and outputs, on tiny runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import matplotlib.image
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify as classify_particles
from cryotorch.engine.initialisation import cluster_maps, kmeans
from cryotorch.engine.posterior import (
    ClassSimilarity,
    StraightThroughHard,
    effective_sample_size,
    tune_similarity,
)
from cryotorch.engine.schedules import HardSchedule, ResolutionSchedule, SimilaritySchedule
from cryotorch.engine.settings import ClassificationSettings, Masks, ModelSettings, OptimSettings
from cryotorch.errors import InputError
from cryotorch.evaluation import classification_accuracy
from cryotorch.io import ParticleImages, read_map, read_particles, write_map, write_particles
from cryotorch.physics.fourier import fourier_crop_3d
from tests.run_helpers import run_classify, simulate_two_blob_classes

PRESETS = sorted(
    p.name.removesuffix(".yaml")
    for p in files("cryotorch.configs").joinpath("experiment").iterdir()
    if p.name.endswith(".yaml")
)
FAST = [
    "logger=none",
    "logger.quiet=true",
    "model.target_resolution=12",
    "model.initial_resolution=18",
    "model.resolution_reach_at=2",
    "optim.online_epochs=1",
    "optim.batch_per_class=100",
    "optim.max_iterations=4",
]


@pytest.fixture(scope="module")
def tiny_star(tmp_path_factory) -> Path:
    """300 particles of two blob maps (box 24, 3 Å), SNR 1."""
    return simulate_two_blob_classes(tmp_path_factory.mktemp("tiny"), 300, 1.0, seed=1)


def classify(tiny_star: Path, out: Path, *overrides: str) -> dict:
    return run_classify(tiny_star, out, *FAST, *overrides)


def read_iterations(out: Path) -> list[dict]:
    with open(out / "iterations.csv") as f:
        return list(csv.DictReader(f))


def ess_of(out: Path) -> np.ndarray:
    return effective_sample_size(torch.from_numpy(np.load(out / "posteriors.npy")).double()).numpy()


def test_tiny_run_writes_every_output_and_classifies(tiny_star: Path, tmp_path: Path):
    summary = classify(
        tiny_star, tmp_path, "posterior.similarity.anneal_end=2", "optim.max_iterations=8"
    )
    assert summary["accuracy"] >= 0.95
    star = starfile.read(tmp_path / "particles.star", always_dict=True)["particles"]
    original = starfile.read(tiny_star, always_dict=True)["particles"]
    assert list(star.columns[: len(original.columns)]) == list(original.columns)
    assert {"rlnClassNumber", "rlnMaxValueProbDistribution", "rlnCryotorchClassESS"} <= set(
        star.columns
    )
    post = np.load(tmp_path / "posteriors.npy")
    assert post.shape == (300, 2) and post.dtype == np.float32
    np.testing.assert_allclose(post.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(star["rlnClassNumber"].to_numpy(), post.argmax(1) + 1)
    # The maps at the particles' box and pixel size (24 at 3 Å), refined at the working box
    # (12 at 6 Å): no power beyond its Nyquist, which the header says.
    for name in ("class_002.mrc", "class_002_hard.mrc"):
        vol, voxel = read_map(tmp_path / name)
        assert vol.shape == (24, 24, 24) and voxel == pytest.approx(3.0)
        power = np.abs(np.fft.fftn(vol)) ** 2
        f = np.meshgrid(*[np.abs(np.fft.fftfreq(24))] * 3, indexing="ij")
        beyond = np.maximum(np.maximum(f[0], f[1]), f[2]) >= 0.25  # the working box's Nyquist
        assert power[beyond].sum() < 1e-10 * power.sum()
        with mrcfile.open(tmp_path / name) as mrc:
            assert "to 12.0 A, box 12 at 6.000 A padded to 24" in mrc.header.label[1].decode()
    assert np.load(tmp_path / "posteriors_estep.npy").shape == (300, 2)
    rows = read_iterations(tmp_path)
    assert len(rows) == summary["iterations"]
    # true_classes.txt is beside the particles: every row has the accuracy of that iteration's
    # classes (online rows: over the particles seen so far), the last one the final accuracy.
    accuracy = [float(row["accuracy_percent"]) for row in rows]
    assert all(0 <= a <= 100 for a in accuracy)
    assert accuracy[-1] == pytest.approx(100 * summary["accuracy"])


def test_beta_one_throughout_gives_ess_k(tiny_star: Path, tmp_path: Path):
    beta_one = ["posterior.similarity.start=1", "posterior.similarity.anneal_start=1000"]
    classify(tiny_star, tmp_path, *beta_one, "posterior.similarity.anneal_end=1000")
    np.testing.assert_allclose(ess_of(tmp_path), 2.0, rtol=1e-5)


@pytest.mark.parametrize("form", ["temperature", "mixing"])
def test_beta_zero_leaves_the_estep_posterior(tiny_star: Path, tmp_path: Path, form: str):
    beta_zero = ["posterior.similarity.start=0", "posterior.similarity.anneal_end=0"]
    classify(tiny_star, tmp_path, *beta_zero, f"posterior.similarity.form={form}")
    np.testing.assert_allclose(
        np.load(tmp_path / "posteriors.npy"), np.load(tmp_path / "posteriors_estep.npy"), atol=1e-6
    )


def test_hard_always_gives_ess_one_whatever_beta(tiny_star: Path, tmp_path: Path):
    for beta in ("0.0", "0.7"):
        classify(
            tiny_star,
            tmp_path / beta,
            "posterior.hard=always",
            f"posterior.similarity.start={beta}",
        )
        np.testing.assert_allclose(ess_of(tmp_path / beta), 1.0)
    for name in ("posteriors.npy", "class_001.mrc", "class_002.mrc"):
        assert (tmp_path / "0.0" / name).read_bytes() == (tmp_path / "0.7" / name).read_bytes(), (
            name
        )


def test_hard_after_anneal_and_first_n_schedules(tiny_star: Path, tmp_path: Path):
    after = ["posterior.hard=after_anneal", "posterior.similarity.anneal_end=3"]
    classify(tiny_star, tmp_path / "after", *after, "optim.max_iterations=5")
    rows = read_iterations(tmp_path / "after")
    assert [r["hard"] == "True" for r in rows] == [float(r["beta"]) == 0.0 for r in rows]
    assert any(r["hard"] == "True" for r in rows) and rows[0]["hard"] == "False"
    classify(tiny_star, tmp_path / "first", "posterior.hard=first_n", "posterior.hard_iterations=2",
             "posterior.similarity.start=0", "posterior.similarity.anneal_end=0")  # fmt: skip
    rows = read_iterations(tmp_path / "first")
    assert [r["hard"] for r in rows] == ["True", "True"] + ["False"] * (len(rows) - 2)


def test_em_does_not_stop_before_the_resolution_reaches_its_target(tiny_star: Path, tmp_path: Path):
    # SNR 1: no particle changes class from iteration 3 on (15.75 Å), but the E-step's limit
    # grows to 12 Å only by iteration 8; EM used to stop at 15.75 Å.
    classify(tiny_star, tmp_path, "optim.online_epochs=0", "posterior.similarity.start=0",
             "posterior.similarity.anneal_end=0", "model.resolution_reach_at=8",
             "optim.max_iterations=12")  # fmt: skip
    rows = read_iterations(tmp_path)
    assert float(rows[3]["percent_changed"]) < 2.0
    assert len(rows) == 9 and float(rows[-1]["resolution"]) == 12.0


def test_em_with_a_fixed_resolution_may_stop_before_reach_at(tiny_star: Path, tmp_path: Path):
    # The same run at 12 Å from the start: nothing is left to grow, so EM stops once < 2 %
    # change (it used to wait for iteration 8 all the same).
    classify(tiny_star, tmp_path, "optim.online_epochs=0", "posterior.similarity.start=0",
             "posterior.similarity.anneal_end=0", "model.resolution_reach_at=8",
             "model.initial_resolution=12", "optim.max_iterations=12")  # fmt: skip
    rows = read_iterations(tmp_path)
    assert 2 <= len(rows) < 9 and float(rows[-1]["percent_changed"]) < 2.0
    assert {float(r["resolution"]) for r in rows} == {12.0}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_composes_and_runs(tiny_star: Path, tmp_path: Path, preset: str):
    summary = classify(tiny_star, tmp_path, f"experiment={preset}", "optim.max_iterations=3")
    assert summary["iterations"] >= 1 and (tmp_path / "class_001.mrc").is_file()


def test_schedules_by_hand():
    r = ResolutionSchedule(20.0, 5.0, reach_at=4)  # 20, 16.25, 12.5, 8.75, 5 Å
    assert [r.max_shell(i, 64, 1.5) for i in range(6)] == [4, 5, 7, 10, 19, 19]
    assert [r.reached(i, 64, 1.5) for i in range(6)] == [False] * 4 + [True] * 2
    assert all(ResolutionSchedule(8.0, 8.0, 4).reached(i, 64, 1.5) for i in range(6))
    # In a box whose Nyquist is 12 Å, 8.75 Å at iteration 3 is already the end's shell.
    assert [r.max_shell(i, 64, 6.0) for i in range(5)] == [19, 23, 30, 32, 32]
    assert [r.reached(i, 64, 6.0) for i in range(5)] == [False] * 3 + [True] * 2
    s = SimilaritySchedule(0.5, 2, 6)
    assert [s.beta(i) for i in range(8)] == [0.5, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
    assert [HardSchedule("after_anneal").is_hard(i, s.beta(i)) for i in range(8)] == [False] * 6 + [
        True
    ] * 2
    assert [HardSchedule("first_n", 3).is_hard(i, 0.5) for i in range(5)] == [True] * 3 + [
        False
    ] * 2


def test_posterior_layers_limits_and_gradients():
    scores = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for form in ("temperature", "mixing"):
        layer = ClassSimilarity(form)
        torch.testing.assert_close(
            layer(scores, 1.0), torch.full((6, 3), 1 / 3, dtype=torch.float64)
        )
        torch.testing.assert_close(layer(scores, 0.0), torch.softmax(scores, 1))
        assert torch.autograd.gradcheck(lambda s, layer=layer: layer(s, 0.3), (scores,))
    probs = torch.softmax(torch.randn(6, 3, dtype=torch.float64), 1).requires_grad_()
    hard = StraightThroughHard()(probs)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(1) == 1).all()
    (grad,) = torch.autograd.grad((hard * torch.arange(3.0, dtype=torch.float64)).sum(), probs)
    torch.testing.assert_close(
        grad, torch.arange(3.0, dtype=torch.float64).expand(6, 3)
    )  # straight through


def test_estep_gradcheck():
    from cryotorch.engine.batches import ParticleBatch
    from cryotorch.engine.estep import EStep
    from cryotorch.engine.noise import NoiseModel
    from cryotorch.physics.slices import slice_geometry
    from tests.physics_helpers import random_rotations

    d, pad, k, b = 6, 2, 2, 3
    p = pad * d
    gen = torch.Generator().manual_seed(0)
    rot = random_rotations(b, seed=1)
    batch = ParticleBatch(
        rows=np.arange(b),
        spectra=torch.randn(b, d, d // 2 + 1, dtype=torch.complex128, generator=gen),
        ctf=torch.randn(b, d, d // 2 + 1, dtype=torch.float64, generator=gen),
        shift=torch.ones(b, d, d // 2 + 1, dtype=torch.complex128),
        rotations=rot,
        optics_group=torch.zeros(b, dtype=torch.long),
        geometry=slice_geometry(rot, d, pad),
    )
    noise = NoiseModel(torch.rand(1, d // 2 + 1, dtype=torch.float64, generator=gen) + 0.5)
    volumes = torch.randn(
        p * p * (p // 2 + 1), 2 * k, dtype=torch.float64, generator=gen, requires_grad=True
    )
    for optimal in (False, True):
        assert torch.autograd.gradcheck(
            lambda v, o=optimal: EStep(o)(v, batch, noise, d // 2).loglik,
            (volumes,),
            fast_mode=True,
        )

    # Optimal contrast: images that are s_i times class 0's noise-free slice get s_i back, and
    # fit class 0 exactly.
    true_scale = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64)
    model = EStep()(volumes.detach(), batch, noise, d // 2).projections[:, 0] * batch.ctf
    batch.spectra = true_scale[:, None, None] * model
    result = EStep(optimal_scale=True)(volumes.detach(), batch, noise, d // 2)
    torch.testing.assert_close(result.scale[:, 0], true_scale)
    torch.testing.assert_close(result.loglik[:, 0], torch.zeros(b, dtype=torch.float64))
    assert (result.loglik[:, 1] < -1).all() and EStep()(volumes, batch, noise, 2).scale is None


def test_more_classes_than_particles_is_refused(tiny_star: Path, tmp_path: Path):
    with pytest.raises(
        ValueError, match=r"model\.num_classes = 400 is more than its 300 particles"
    ):
        classify(tiny_star, tmp_path, "model.num_classes=400")
    assert not (tmp_path / "particles.star").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = "from cryotorch.cli.classify import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def test_command_refuses_bad_configuration_plainly(tmp_path: Path):
    result = run_cli(f"output_dir={tmp_path}", "posterior.similarity.start=2")
    assert result.returncode == 2
    assert "posterior.similarity.start must be in [0, 1], got 2.0" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(f"output_dir={tmp_path}", f"data.particles={tmp_path / 'missing.star'}")
    assert result.returncode == 2 and "missing.star: file does not exist" in result.stderr


def test_multirun_sweep_over_k(tiny_star: Path, tmp_path: Path):
    result = run_cli(
        "-m",
        f"data.particles={tiny_star}",
        f"output_dir={tmp_path}",
        *FAST,
        "model.num_classes=2,3",
    )
    assert result.returncode == 0, result.stderr
    for job, k in ((0, 2), (1, 3)):
        assert (tmp_path / str(job) / f"class_{k:03d}.mrc").is_file()
        assert np.load(tmp_path / str(job) / "posteriors.npy").shape == (300, k)


def test_given_initial_maps_any_greyscale_keep_their_class_order(tiny_star: Path, tmp_path: Path):
    # The true maps, in reverse order and 1000x too bright: the scale fit puts them on the
    # particles' greyscale and class 1 must be the particles of the second true map.
    folder = tiny_star.parent
    maps = []
    for k in (2, 1):
        volume, voxel = read_map(folder / f"class_{k:03d}.mrc")
        maps.append(tmp_path / f"given_{k}.mrc")
        write_map(maps[-1], 1000 * volume, voxel)
    out = tmp_path / "run"
    classify(
        tiny_star,
        out,
        f"data.initial_maps=[{maps[0]},{maps[1]}]",
        "optim.online_epochs=0",
        "optim.max_iterations=3",
    )
    truth = np.loadtxt(folder / "true_classes.txt", dtype=int) - 1
    assert (np.load(out / "posteriors.npy").argmax(1) == 1 - truth).mean() >= 0.95
    fitted = fourier_crop_3d(torch.as_tensor(read_map(out / "class_002.mrc")[0]), 12).numpy()
    given = fourier_crop_3d(torch.as_tensor(read_map(folder / "class_001.mrc")[0]), 12).numpy()
    assert 0.5 < np.abs(fitted).max() / np.abs(given).max() < 2  # the 1000x is gone


def test_initial_maps_must_match_the_classes_and_the_box(tiny_star: Path, tmp_path: Path):
    one = tiny_star.parent / "class_001.mrc"
    with pytest.raises(InputError, match=r"data\.initial_maps: 1 maps given for model"):
        classify(tiny_star, tmp_path, f"data.initial_maps=[{one}]")
    small = tmp_path / "small.mrc"
    write_map(small, np.ones((12, 12, 12), np.float32), 3.0)
    with pytest.raises(InputError, match=r"small\.mrc: header\.nx/ny/nz: map is \(12, 12, 12\)"):
        classify(tiny_star, tmp_path, f"data.initial_maps=[{one},{small}]")
    assert not (tmp_path / "particles.star").exists()


def test_identical_classes_are_reported_and_reseeding_separates_them(
    tiny_star: Path, tmp_path: Path
):
    # Two identical starting maps: every posterior is exactly 1/2 and the classes can never
    # part by themselves. They are reported alike; one re-seed (a random half of the larger
    # class moved to the other) lets them separate.
    same = tiny_star.parent / "class_001.mrc"
    args = [f"data.initial_maps=[{same},{same}]", "optim.online_epochs=0", "optim.max_iterations=6"]
    stuck = classify(tiny_star, tmp_path / "stuck", *args)
    rows = read_iterations(tmp_path / "stuck")
    assert all(int(r["duplicate_classes"]) == 1 for r in rows)
    assert "classes 1 and 2 alike" in rows[-1]["notes"]
    assert stuck["accuracy"] < 0.6
    reseeded = classify(tiny_star, tmp_path / "reseeded", *args, "model.reseed=2")
    rows = read_iterations(tmp_path / "reseeded")
    assert "re-seeding class 2 from half of class 1" in rows[0]["notes"]
    # The two halves still correlate above 0.99 one pass later: reported, but not re-seeded
    # again (that would undo the split); they part by themselves.
    assert "classes 1 and 2 alike" in rows[1]["notes"] and "just split" in rows[1]["notes"]
    assert not any("re-seeding" in r["notes"] for r in rows[1:])
    assert reseeded["accuracy"] >= 0.95
    assert int(rows[-1]["duplicate_classes"]) == 0


def test_both_ess_are_reported_and_force_hard_leaves_the_esteps_spread(
    tiny_star: Path, tmp_path: Path
):
    """The forum's question: under force hard the ESS after the layers is 1 for every
    particle, and the E-step's own ESS still shows how sure the data are. Both are in the
    table (per iteration), in particles.star (per particle, agreeing with the two posterior
    files) and in TensorBoard as a histogram every iteration."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    noisy = simulate_two_blob_classes(tmp_path / "data", 300, 0.02, seed=4)  # not all sure
    out = tmp_path / "run"
    classify(noisy, out, "posterior.hard=always", "logger=tensorboard")
    rows = read_iterations(out)
    assert all(float(row["mean_class_ess"]) == pytest.approx(1.0) for row in rows)
    assert all(float(row["mean_estep_ess"]) >= 1.0 for row in rows)
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    np.testing.assert_allclose(star["rlnCryotorchClassESS"], 1.0, atol=1e-6)
    estep = np.load(out / "posteriors_estep.npy").astype(np.float64)
    np.testing.assert_allclose(star["rlnCryotorchEStepESS"], 1 / (estep**2).sum(1), rtol=1e-5)
    assert star["rlnCryotorchEStepESS"].max() > 1.2  # some particles the data leave unsure
    assert float(rows[-1]["mean_estep_ess"]) == pytest.approx(
        star["rlnCryotorchEStepESS"].mean(), rel=1e-5
    )  # the last full pass's E-step is the one the files hold
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    for tag in ("run/class_ess", "run/estep_ess"):
        assert len(events.Histograms(tag)) == len(rows), tag
    assert len(events.Scalars("run/mean_estep_ess")) == len(rows)


def test_hard_assignment_maps_are_written_and_equal_soft_maps_under_force_hard(
    tiny_star: Path, tmp_path: Path
):
    classify(tiny_star, tmp_path / "hard", "posterior.hard=always")
    mixed = ["posterior.similarity.form=mixing", "posterior.similarity.start=0.9"]
    classify(tiny_star, tmp_path / "mixed", *mixed, "posterior.similarity.anneal_end=100")
    for k in (1, 2):
        soft = read_map(tmp_path / "hard" / f"class_{k:03d}.mrc")[0]
        hard = read_map(tmp_path / "hard" / f"class_{k:03d}_hard.mrc")[0]
        # Same one-hot weights; only the noise estimate differs (one M-step later).
        assert np.abs(hard - soft).max() < 0.02 * np.abs(soft).max()
        # β = 0.9 mixing: the posterior-weighted maps are near the average of both classes,
        # the hard-assignment maps are not.
        soft = read_map(tmp_path / "mixed" / f"class_{k:03d}.mrc")[0]
        hard = read_map(tmp_path / "mixed" / f"class_{k:03d}_hard.mrc")[0]
        assert np.abs(hard - soft).max() > 0.1 * np.abs(soft).max()


@pytest.mark.parametrize("with_consensus", [False, True])
def test_focus_mask_of_zeros_leaves_nothing_to_tell_classes_apart(
    tiny_star: Path, with_consensus: bool
):
    # F = 0: the E-step sees S·V̄ for every class, so its posterior is the class prior.
    table = read_particles(tiny_star)
    settings = ClassificationSettings(
        model=ModelSettings(target_resolution=12, initial_resolution=18),
        optim=OptimSettings(online_epochs=0, max_iterations=2),
        progress=False,
    )
    with ParticleImages(table) as images:
        batcher = BatchMaker(images, 12, torch.device("cpu"))
        consensus = torch.ones(12, 12, 12) if with_consensus else None
        masks = Masks(focus=torch.zeros(12, 12, 12), consensus=consensus)
        result = classify_particles(batcher, settings, masks=masks)
    prior = result.class_prior.numpy()
    np.testing.assert_allclose(result.posteriors_estep, np.broadcast_to(prior, (300, 2)), atol=1e-6)


@pytest.mark.parametrize("form", ["temperature", "mixing"])
def test_tune_similarity_reaches_the_target_ess(form: str):
    scores = 20 * torch.randn(
        500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    layer = ClassSimilarity(form)
    beta = tune_similarity(scores, layer, 0.75)
    assert 0 < beta < 1
    assert float(effective_sample_size(layer(scores, beta)).mean()) == pytest.approx(3.0, abs=1e-6)
    flat = torch.zeros(10, 4, dtype=torch.float64)  # already ESS = K: nothing to add
    assert tune_similarity(flat, layer, 0.75) == 0.0


def test_auto_tuned_similarity_starts_at_the_target_ess(tiny_star: Path, tmp_path: Path):
    # One online batch of all 300 particles; the random-assignment start already gives a mean
    # ESS of 1.7 at β = 0 here, so aim at 0.95 K = 1.9.
    # (With the sphere of 90 % of the box, said so: with mask.solvent=auto the start's ESS is
    # already above 1.9 here, and β is tuned to 0.)
    target = ["posterior.similarity.target_ess_fraction=0.95", "optim.batch_per_class=150"]
    target += ["mask.solvent=sphere"]
    classify(tiny_star, tmp_path, "posterior.similarity.auto_tune=true", *target)
    first = read_iterations(tmp_path)[0]
    assert first["notes"].startswith("class similarity tuned: β0 = ")
    assert float(first["beta"]) > 0
    assert float(first["beta"]) == pytest.approx(float(first["notes"].split("= ")[1][:5]), abs=1e-3)
    assert float(first["mean_class_ess"]) == pytest.approx(1.9, abs=1e-3)


@pytest.mark.parametrize("suffix", [".star", ".cs"])
def test_a_runs_outputs_are_the_next_runs_inputs(tiny_star: Path, tmp_path: Path, suffix: str):
    """The next job takes a run's files as they are: its particle file as ``data.particles``
    (with the classes it added), its class maps as ``data.initial_maps`` and one as
    ``data.reference`` (they are at the particles' box and pixel size), its solvent mask as
    ``mask.solvent``; it starts where the first ended (classes kept in order) and ends where
    it did."""
    particles = tiny_star
    if suffix == ".cs":
        particles = tmp_path / "J1_particles.cs"
        write_particles(read_particles(tiny_star), particles)
    first = tmp_path / "first"
    classify(particles, first)
    maps = [first / "class_001.mrc", first / "class_002.mrc"]
    second = tmp_path / "second"
    classify(
        first / f"particles{suffix}",
        second,
        f"data.initial_maps=[{maps[0]},{maps[1]}]",
        f"data.reference={maps[0]}",
        f"mask.solvent={first / 'solvent_mask.mrc'}",
        "optim.online_epochs=0",
    )
    before, after = (np.load(d / "posteriors.npy").argmax(1) for d in (first, second))
    assert (before == after).mean() >= 0.95


@pytest.mark.parametrize("threshold", [0.0, 0.99])
def test_one_particle_file_per_class_with_a_probability_threshold(
    tiny_star: Path, tmp_path: Path, threshold: float
):
    """particles_class00k.star holds exactly the particles whose class is k and whose E-step
    probability of k exceeds the threshold, each row as particles.star has it (every input
    column and the class columns), in the input's order; a classifier reads it as input."""
    noisy = simulate_two_blob_classes(tmp_path / "data", 300, 0.05, seed=4)  # not all sure
    out = tmp_path / "run"
    # With the sphere of 90 % of the box, said so: some particles stay unsure (with
    # mask.solvent=auto every one of them is > 0.99 sure of its class here).
    sphere = "mask.solvent=sphere"
    classify(noisy, out, f"outputs.class_min_probability={threshold}", sphere)
    everyone = starfile.read(out / "particles.star", always_dict=True)["particles"]
    estep = np.load(out / "posteriors_estep.npy")
    best = everyone["rlnClassNumber"].to_numpy() - 1
    kept = estep[np.arange(len(best)), best] > threshold
    assert kept.all() if threshold == 0 else 0 < kept.sum() < len(best)
    for k in (0, 1):
        name = out / f"particles_class{k + 1:03d}.star"
        expected = everyone[(best == k) & kept].reset_index(drop=True)
        mine = starfile.read(name, always_dict=True)["particles"]
        pd.testing.assert_frame_equal(mine, expected, check_dtype=False)
        assert len(read_particles(name)) == len(expected)


def test_cs_in_gives_cs_out_with_every_field_kept(tiny_star: Path, tmp_path: Path):
    # A .cs made from the tiny set, with an extra field cryotorch does not know; classified with
    # the FSC regulariser (its half-sets from alignments3D/split).
    source = tmp_path / "J1_particles.cs"
    write_particles(read_particles(tiny_star), source)
    raw = np.load(source)
    extra = np.zeros(len(raw), dtype=[*raw.dtype.descr, ("location/micrograph_uid", "<u8")])
    for name in raw.dtype.names:
        extra[name] = raw[name]
    extra["location/micrograph_uid"] = np.arange(len(raw)) * 7
    with open(source, "wb") as f:
        np.save(f, extra)
    out = tmp_path / "run"
    classify(source, out, "model.regulariser=fsc")
    result = np.load(out / "particles.cs")
    for name in extra.dtype.names:
        assert result[name].tolist() == extra[name].tolist(), name
    posteriors = np.load(out / "posteriors.npy")
    np.testing.assert_array_equal(result["alignments3D/class"], posteriors.argmax(1))
    np.testing.assert_allclose(result["alignments3D/class_ess"], 1 / (posteriors**2).sum(1), 1e-5)
    for k in range(2):
        np.testing.assert_array_equal(
            result[f"alignments_class3D_{k}/class_posterior"], posteriors[:, k]
        )
    cryosparc = pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools: dev dependency")
    assert len(cryosparc.Dataset.load(out / "particles.cs")) == 300
    for k in range(2):  # each class's particles as a .cs too, every field kept
        mine = np.load(out / f"particles_class{k + 1:03d}.cs")
        rows = np.flatnonzero(result["alignments3D/class"] == k)
        assert mine.dtype == result.dtype
        for name in mine.dtype.names:
            np.testing.assert_array_equal(mine[name], result[name][rows], err_msg=name)
        assert len(cryosparc.Dataset.load(out / f"particles_class{k + 1:03d}.cs")) == len(rows)


def test_bad_maps_and_masks_are_refused_before_anything_is_written(tiny_star: Path, tmp_path: Path):
    wrong_box = tmp_path / "box.mrc"
    write_map(wrong_box, np.ones((20, 20, 20), np.float32), 3.0)
    wrong_pixel = tmp_path / "pixel.mrc"
    write_map(wrong_pixel, np.ones((24, 24, 24), np.float32), 2.0)
    not_a_mask = tmp_path / "mask.mrc"
    write_map(not_a_mask, np.full((24, 24, 24), 3.0, np.float32), 3.0)
    cases = [
        ([f"data.reference={wrong_box}"], r"box\.mrc: header\.nx/ny/nz: map is \(20, 20, 20\)"),
        ([f"data.reference={wrong_pixel}"], r"pixel\.mrc: header\.voxel_size: 2\.0000 Å, the"),
        ([f"mask.focus={not_a_mask}"], r"mask\.mrc: data: a mask holds values in \[0, 1\]"),
        ([f"mask.solvent={not_a_mask}"], r"mask\.mrc: data: a mask holds values in \[0, 1\]"),
        (["mask.solvent=from_reference"], r"mask\.solvent: from_reference needs data\.reference"),
    ]
    for i, (overrides, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        with pytest.raises(InputError, match=message):
            classify(tiny_star, out, *overrides)
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_pca_start_already_separates_the_classes(tmp_path: Path):
    # 600 blob particles, SNR 0.2: measured 65.5 % after the first online-EM batch from a
    # random-assignment start, 99 % from the PCA start.
    star = simulate_two_blob_classes(tmp_path / "data", 600, 0.2, seed=3)
    truth = np.loadtxt(star.parent / "true_classes.txt", dtype=int) - 1
    first = {}
    for init in ("random", "pca"):
        settings = ClassificationSettings(
            model=ModelSettings(target_resolution=9, init=init),
            optim=OptimSettings(batch_per_class=100, max_iterations=2),
            progress=False,
        )
        accuracy = []

        def monitor(entry, maps, assignment, accuracy=accuracy):
            seen = assignment >= 0
            accuracy.append(classification_accuracy(assignment[seen], truth[seen], 2))

        with ParticleImages(read_particles(star)) as images:
            classify_particles(BatchMaker(images, 16, torch.device("cpu")), settings, monitor)
        first[init] = accuracy[0]
    assert first["pca"] >= 0.95 and first["random"] < 0.8, first


def test_kmeans_and_pca_clustering_find_planted_groups():
    rng = np.random.default_rng(0)
    points = torch.as_tensor(
        np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal(3, 0.1, (7, 2))])
    )
    labels = kmeans(points, 2, np.random.default_rng(1))
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    maps = torch.zeros(12, 4, 4, 4, dtype=torch.float64)
    maps[:5, 1, 1, 1] = 1.0  # two groups of maps that differ in one voxel, plus noise
    maps += 0.01 * torch.randn(
        12, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    labels = cluster_maps(maps, 2, np.random.default_rng(3))
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]


def _copy_of(tiny_star: Path, folder: Path, edit) -> Path:
    """A copy of the tiny set (its own stack) with ``edit(blocks, stack_path)`` applied."""
    import shutil

    folder.mkdir()
    shutil.copy(tiny_star.parent / "particles.mrcs", folder / "particles.mrcs")
    blocks = starfile.read(tiny_star, always_dict=True)
    blocks["particles"]["rlnImageName"] = [
        f"{name.split('@')[0]}@{folder / 'particles.mrcs'}"
        for name in blocks["particles"]["rlnImageName"]
    ]
    edit(blocks, folder / "particles.mrcs")
    starfile.write(blocks, folder / "particles.star", overwrite=True)
    return folder / "particles.star"


def _drop_defocus_v(blocks, stack):
    del blocks["particles"]["rlnDefocusV"]


def _index_past_end(blocks, stack):
    blocks["particles"].loc[4, "rlnImageName"] = f"301@{stack}"


def _nan_image(blocks, stack):
    import mrcfile

    with mrcfile.mmap(stack, "r+") as mrc:
        mrc.data[250, 3, 4] = np.nan


def _pixel_size(blocks, stack):
    blocks["optics"]["rlnImagePixelSize"] = 3.5


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_drop_defocus_v, r"particles\.star: data_particles: missing required column\(s\) rlnDe"),
        (_index_past_end, r"particles\.star: rlnImageName: row 5: image 301 is past the end"),
        (
            _nan_image,
            r"particles\.mrcs: image 251: contains NaN or Inf \(.*particles\.star row 251\)",
        ),
        (_pixel_size, r"particles\.mrcs: header\.voxel_size: pixel size 3\.0000 Å disagrees"),
    ],
)
def test_malformed_particles_are_refused_by_the_classifier_and_nothing_is_written(
    tiny_star: Path, tmp_path: Path, edit, pattern
):
    star = _copy_of(tiny_star, tmp_path / "data", edit)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=pattern):
        classify(star, out)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("kernels", ["torch", "compiled"])
def test_every_kernel_choice_gives_the_same_run(tiny_star: Path, tmp_path: Path, kernels: str):
    classify(tiny_star, tmp_path / "numba", "optim.max_iterations=3")  # the default
    classify(tiny_star, tmp_path / kernels, "optim.max_iterations=3", f"kernels={kernels}")
    ours, ref = (np.load(tmp_path / run / "posteriors.npy") for run in ("numba", kernels))
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_the_kernel_choice_is_the_batch_makers_not_the_process(tiny_star: Path, tmp_path: Path):
    """BatchMaker's ``kernels`` make its batches' geometries; two makers with different kernels
    coexist; an unknown name is refused (by the CLI as an input error, nothing written)."""
    with ParticleImages(read_particles(tiny_star)) as images:
        rows = np.arange(20)
        by_torch = BatchMaker(images, 12, torch.device("cpu"), kernels="torch")(rows)
        by_default = BatchMaker(images, 12, torch.device("cpu"))(rows)
        assert by_torch.geometry.kernels.name == "torch"
        assert by_default.geometry.kernels.name == "numba"
        with pytest.raises(ValueError, match="kernels must be one of"):
            BatchMaker(images, 12, torch.device("cpu"), kernels="fast")
    out = tmp_path / "bad"
    with pytest.raises(InputError, match="kernels must be one of numba, torch, compiled"):
        classify(tiny_star, out, "kernels=fast")
    assert not out.exists() or not any(out.iterdir())


def test_prefetching_the_next_batch_changes_nothing(tiny_star: Path, tmp_path: Path):
    one_at_a_time = ["optim.prefetch=false", "optim.batch_size=64"]
    classify(tiny_star, tmp_path / "plain", "optim.max_iterations=3", *one_at_a_time)
    prefetch = ["optim.prefetch=true", "optim.batch_size=64"]
    classify(tiny_star, tmp_path / "prefetch", "optim.max_iterations=3", *prefetch)
    for name in ("posteriors.npy", "posteriors_estep.npy"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "prefetch" / name), np.load(tmp_path / "plain" / name)
        )


def test_spectrum_cache_gives_the_same_batches_and_skips_the_reads(tiny_star: Path):
    """Cached spectra equal freshly read ones; a cached batch reads no image; the cache never
    holds more than its byte budget, and rows past it are read every pass."""
    table = read_particles(tiny_star)  # 300 particles
    each = 8 * 12 * 7  # complex64 at box 12
    rows = [np.arange(0, 100), np.arange(100, 200), np.array([5, 150, 7])]
    with ParticleImages(table) as images:
        plain = BatchMaker(images, 12, torch.device("cpu"))
        cached = BatchMaker(images, 12, torch.device("cpu"), cache_bytes=150 * each)
        assert cached.cache_capacity == 150
        reads = []
        read = images.read
        images.read = lambda r: reads.append(len(r)) or read(r)
        for _ in range(2):
            for r in rows:
                torch.testing.assert_close(cached.load(r).spectra, plain.load(r).spectra)
        assert cached._n_cached == 150
    # Pass 1: every batch read by both makers (cached, then plain). Pass 2: the cached maker
    # reads only the batches holding rows past its budget (150-199, and 150).
    first, second = [100, 100, 100, 100, 3, 3], [100, 100, 100, 3, 3]
    assert reads == [*first, *second]


@pytest.mark.gpu
def test_a_run_on_cuda_gives_the_classes_and_maps_of_the_same_run_on_cpu(
    tiny_star: Path, tmp_path: Path
):
    # Same data, settings and seed; only the device (and its kernels) differ: float32 sums in
    # another order, so the posteriors agree to rounding and the classes and maps match.
    for device in ("cpu", "cuda"):
        classify(tiny_star, tmp_path / device, f"device={device}", "optim.online_epochs=0")
    on_cpu, on_cuda = (np.load(tmp_path / d / "posteriors.npy") for d in ("cpu", "cuda"))
    assert (on_cpu.argmax(1) == on_cuda.argmax(1)).mean() > 0.99
    np.testing.assert_allclose(on_cuda, on_cpu, atol=0.02)
    for k in (1, 2):
        a, b = (read_map(tmp_path / d / f"class_{k:03d}.mrc")[0] for d in ("cpu", "cuda"))
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


# Every kind of run the CLI offers, on CUDA: each path (schedules, initialisations, regularisers,
# gradient training, masks, re-seeding, batches read ahead in a thread) must keep its tensors on
# the device. The two classes of the tiny set are easy (SNR 1): every run finds them (the
# three-class run, that re-seeds a look-alike class, to 90 % on the CPU).
CUDA_RUNS = {
    "batches read ahead, no cache": [
        "optim.batch_size=64",
        "optim.prefetch=true",
        "data.cache_gb=0",
    ],
    "hard after anneal": ["experiment=hard_after_anneal"],
    "hard first then soft": ["experiment=hard_first_then_soft"],
    "cryosparc-like": ["experiment=cryosparc_like"],
    "relion-like": ["experiment=relion_like"],
    "pca init, fsc filter": ["model.init=pca", "model.regulariser=fsc"],
    "denoiser, optimal contrast": ["model.regulariser=denoise", "model.contrast=optimal"],
    "gradient, noise trained": ["optim=gradient", "optim.gradient.train_noise=true"],
    "mask from reference, focus": [
        "data.reference=MAP",
        "mask.solvent=from_reference",
        "mask.focus=FOCUS",
    ],
    "re-seeding": ["model.num_classes=3", "model.reseed=1", "model.empty_class_fraction=0.2"],
}


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", CUDA_RUNS.values(), ids=CUDA_RUNS.keys())
def test_every_kind_of_run_goes_through_on_cuda(
    tiny_star: Path, tmp_path: Path, overrides: list[str]
):
    truth = tiny_star.parent / "class_002.mrc"  # the map with the extra blob
    write_map(tmp_path / "focus.mrc", (read_map(truth)[0] > 0.05).astype(np.float32), 3.0)
    files = {"MAP": str(truth), "FOCUS": str(tmp_path / "focus.mrc")}
    pairs = [o.split("=", 1) for o in overrides]
    overrides = [f"{key}={files.get(value, value)}" for key, value in pairs]
    summary = classify(tiny_star, tmp_path / "run", "device=cuda", *overrides)
    posteriors = np.load(tmp_path / "run" / "posteriors.npy")
    assert np.isfinite(posteriors).all()
    np.testing.assert_allclose(posteriors.sum(1), 1, atol=1e-5)
    assert summary["accuracy"] >= 0.85
    if "model.reseed=1" in overrides:
        assert "re-seeding class" in (tmp_path / "run" / "iterations.csv").read_text()


def test_a_run_writes_its_report_on_a_headless_machine(tiny_star: Path, tmp_path: Path):
    """output_dir/report: report.md showing three PNG figures, the last row and the whole
    configuration; made in a process with no display (matplotlib's object API, no pyplot)."""
    out = tmp_path / "run"
    code = "from cryotorch.cli.classify import main; main()"
    args = [f"data.particles={tiny_star}", f"output_dir={out}", *FAST, "logger=tensorboard"]
    args += ["logger.quiet=true", "logger.report_every=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = out / "report"
    text = (report / "report.md").read_text()
    for figure in ("progress.png", "maps.png", "ess.png"):
        assert f"]({figure})" in text
        image = matplotlib.image.imread(report / figure)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01, figure
    assert "cryotorch-classify" in text and f"output_dir={out}" in text
    assert "num_classes: 2" in text and "| mean_estep_ess |" in text
    assert f"{len(read_iterations(out))} iterations so far." in text


def test_the_report_draws_any_ess_even_all_one(tmp_path: Path):
    """Under force hard every ESS after the layers is 1 (in the wheel's fresh venv, a
    histogram of 40 bins over that no-range data failed: "Too many bins for data range"); the
    report's bins are fixed over [1, K], whatever the values."""
    from cryotorch.report import write_report

    rows = [{"iteration": 0, "beta": 0.0, "class_001_fraction": 1.0, "mean_class_ess": 1.0}]
    nearly_one = (1 + np.arange(50) * 1e-7).astype(np.float32)  # float32 rounding of 1s
    ess = {"class_ess": nearly_one, "estep_ess": np.linspace(1, 3, 50)}
    path = write_report(tmp_path, rows, np.zeros((3, 8, 8, 8)), ess, "cmd", "a: 1\n")
    assert (tmp_path / "report" / "ess.png").stat().st_size > 1000 and path.is_file()


def test_report_refreshes_keep_to_their_share_of_the_run(tmp_path: Path, monkeypatch):
    """A refresh due every iteration is put off while the iterations are short against the
    time a refresh takes (at most REPORT_SHARE of the run; 1 s is assumed until one has been
    timed); the report at the end is written whatever; with a share of 1, every refresh that
    is due."""
    import time

    import cryotorch.monitor
    import cryotorch.report
    from cryotorch.monitor import RunMonitor

    written = []

    def slow_report(*args, **kwargs):
        time.sleep(0.02)  # the figures; the iterations below take about nothing
        written.append(len(args[1]))
        return tmp_path / "report.md"

    monkeypatch.setattr(cryotorch.report, "write_report", slow_report)
    short = RunMonitor(tmp_path, tensorboard=False, quiet=True, report_every=1)
    monkeypatch.setattr(cryotorch.monitor, "REPORT_SECONDS_GUESS", 0.0)  # from here on
    maps, ess = torch.zeros(2, 4, 4, 4), {"class_ess": torch.ones(3)}
    row = {"iteration": 0, "phase": "full", "beta": 0.0, "hard": False, "resolution": 9.0,
           "percent_changed": 0.0, "mean_class_ess": 1.0}  # fmt: skip

    def run(monitor: RunMonitor, iterations: int, pause: float = 0.0) -> None:
        for it in range(iterations):
            monitor(row | {"iteration": it}, maps)
            monitor.log_histograms(ess, it)
            time.sleep(pause)

    run(short, 10)
    assert written == []  # a refresh taken to cost 1 s: not before 19 s of the run
    short.write_report()
    assert written == [10]  # the end: always
    written.clear()
    quick = RunMonitor(tmp_path, tensorboard=False, quiet=True, report_every=1)
    run(quick, 10)
    assert written == [1]  # the first refresh only: 0.02 s against no work
    time.sleep(1.0)  # work: over 19 times the refresh's time
    run(quick, 1)
    assert written == [1, 11]
    quick.write_report()
    assert written == [1, 11, 11]  # the end: always
    written.clear()
    run(RunMonitor(tmp_path, tensorboard=False, quiet=True, report_every=2, report_share=1), 6)
    assert written == [2, 4, 6]
