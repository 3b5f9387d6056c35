"""No NaN or Inf anywhere, whatever the data: SNR from 0.001 to noise-free, K from 1 to 50,
classes that empty out, all-zero images, one optics group or many; same seed, same bytes."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryotorch.engine.batches import BatchMaker
from cryotorch.io import ParticleImages, read_map, read_particles
from cryotorch.io.atomic import atomic_path, stale_temporary_files
from cryotorch.simulate.atomic import atomic_model_to_map, builtin_structures
from cryotorch.simulate.particles import SimulationSettings, simulate_particles
from tests.run_helpers import run_classify, simulate_two_blob_classes

FAST = [
    "logger=none",
    "logger.quiet=true",
    "model.target_resolution=9",
    "model.initial_resolution=18",
    "model.resolution_reach_at=2",
    "optim.online_epochs=1",
    "optim.batch_per_class=40",
    "optim.max_iterations=3",
    "posterior.similarity.anneal_end=2",
]


def simulate(folder: Path, snr: float, n: int = 300) -> Path:
    return simulate_two_blob_classes(folder, n, snr, seed=3)


def classify(star: Path, out: Path, *overrides: str) -> dict:
    return run_classify(star, out, *FAST, *overrides)


def assert_all_finite(out: Path, k: int) -> None:
    for name in ("posteriors.npy", "posteriors_estep.npy"):
        values = np.load(out / name)
        assert np.isfinite(values).all(), name
        np.testing.assert_allclose(values.sum(1), 1, atol=1e-4, err_msg=name)
    for i in range(k):
        assert np.isfinite(read_map(out / f"class_{i + 1:03d}.mrc")[0]).all()
        assert np.isfinite(read_map(out / f"class_{i + 1:03d}_hard.mrc")[0]).all()
    with open(out / "iterations.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("phase", "hard", "notes") and value != "":
                    assert math.isfinite(float(value)), (key, row)
    table = starfile.read(out / "particles.star", always_dict=True)["particles"]
    numeric = table.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy()).all()


@pytest.mark.parametrize("snr", [0.001, 0.05, math.inf])
def test_any_snr(tmp_path: Path, snr: float):
    star = simulate(tmp_path / "data", snr)
    summary = classify(star, tmp_path / "run")
    assert_all_finite(tmp_path / "run", 2)
    if snr == math.inf:
        assert summary["accuracy"] == 1.0


@pytest.mark.parametrize("k", [1, 50])
def test_one_class_and_fifty_classes_that_empty_out(tmp_path: Path, k: int):
    star = simulate(tmp_path / "data", 0.05)
    classify(star, tmp_path / "run", f"model.num_classes={k}")
    assert_all_finite(tmp_path / "run", k)
    with open(tmp_path / "run" / "iterations.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert (int(last["empty_classes"]) > 0) == (k == 50)  # some of the 50 did empty out


def test_all_zero_images_and_many_optics_groups(tmp_path: Path):
    star = simulate(tmp_path / "data", 0.05)
    with mrcfile.mmap(star.parent / "particles.mrcs", "r+") as mrc:
        mrc.data[::7] = 0  # every 7th image blank
    blocks = starfile.read(star, always_dict=True)
    optics = blocks["optics"]
    groups = []
    for g in range(8):
        row = optics.iloc[0].copy()
        row["rlnOpticsGroup"] = g + 1
        row["rlnOpticsGroupName"] = f"opticsGroup{g + 1}"
        groups.append(row)
    blocks["optics"] = optics.__class__(groups).reset_index(drop=True)
    blocks["particles"]["rlnOpticsGroup"] = np.arange(len(blocks["particles"])) % 8 + 1
    starfile.write(blocks, star, overwrite=True)
    classify(star, tmp_path / "run")
    assert_all_finite(tmp_path / "run", 2)


def test_same_seed_same_bytes(tmp_path: Path):
    star = simulate(tmp_path / "data", 0.05)
    for name in ("a", "b"):
        classify(star, tmp_path / name, "seed=5")
    for name in ("class_001.mrc", "class_002.mrc", "posteriors.npy", "particles.star"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_optimal_contrast_classifies_images_of_uneven_contrast(tmp_path: Path):
    # Every image times a random factor in [0.3, 1.7]: measured 83 % with the contrast from
    # the input (1 for all), 100 % with the per-particle least-squares contrast.
    star = simulate(tmp_path / "data", 0.5)
    factors = np.random.default_rng(0).uniform(0.3, 1.7, 300).astype(np.float32)
    with mrcfile.mmap(star.parent / "particles.mrcs", "r+") as mrc:
        mrc.data[:] *= factors[:, None, None]
    longer = ["optim.max_iterations=10", "posterior.similarity.anneal_end=5"]
    accuracy = {}
    for contrast in ("from_input", "optimal"):
        out = tmp_path / contrast
        accuracy[contrast] = classify(star, out, f"model.contrast={contrast}", *longer)["accuracy"]
        assert_all_finite(out, 2)
    assert accuracy["optimal"] >= 0.98 and accuracy["from_input"] < 0.9, accuracy


def test_contrast_none_leaves_out_the_files_ctf_scale(tmp_path: Path):
    star = simulate(tmp_path / "data", 0.5, n=10)
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"]["rlnCtfScalefactor"] = 2.0
    starfile.write(blocks, star, overwrite=True)
    with ParticleImages(read_particles(star)) as images:
        rows = np.arange(10)
        scaled = BatchMaker(images, 16, torch.device("cpu"))(rows).ctf
        plain = BatchMaker(images, 16, torch.device("cpu"), use_ctf_scale=False)(rows).ctf
    torch.testing.assert_close(scaled, 2 * plain)


def test_a_run_removes_only_its_own_temporary_files(tmp_path: Path):
    """A run into a folder removes the temporary files of writes a kill cut short, and never a
    user's own files whose names look temporary (they used to match '.*.tmp*')."""
    star = simulate_two_blob_classes(tmp_path / "data", 200, 1.0, seed=1)
    out = tmp_path / "run"
    out.mkdir()
    mine = [out / ".thesis.tmp.tex", out / ".config.tmpl", out / "notes.tmp"]
    for path in mine:
        path.write_text("the user's")
    with atomic_path(out / "probe.txt") as tmp:  # atomic_path's own names are recognised
        assert stale_temporary_files(out) == [tmp]
        tmp.write_text("probe")
    (out / "probe.txt").unlink()
    stale = out / ".iterations.csv.x1y2z3.cryotorch-tmp.csv"  # as a killed write leaves it
    stale.write_text("half")
    run_classify(star, out, "logger=none", "logger.quiet=true", "optim.max_iterations=2")
    assert all(path.read_text() == "the user's" for path in mine)
    assert not stale.exists()


def _map_pair(name: str) -> tuple[np.ndarray, float]:
    """Two class maps ``(2, d, d, d)`` and their voxel size (Å)."""
    if name == "adk":  # adenylate kinase open and closed, box 48 at 2 Å (the sampling)
        structures = builtin_structures()
        maps = [atomic_model_to_map(s, 48, 2.0, 50.0) for s in structures]
        return np.stack(maps).astype(np.float32), 2.0
    d = 48 if name == "spheres" else 32
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    if name == "spheres":  # a sphere of 10 px, and the same with a knob
        body = (x**2 + y**2 + z**2 < 100).astype(np.float32)
        knob = ((x - 11) ** 2 + y**2 + z**2 < 9).astype(np.float32)
        return np.stack([body, body + knob]), 2.0
    # two elongated Gaussians, the second's long axis turned by 90 degrees
    a = np.exp(-(x**2 / 40 + y**2 / 8 + z**2 / 8))
    b = np.exp(-(x**2 / 8 + y**2 / 40 + z**2 / 8))
    return np.stack([a, b]).astype(np.float32), 3.0


@pytest.mark.parametrize("pair", ["adk", "spheres", "rods"])
@pytest.mark.parametrize("snr", [math.inf, 1000.0])
def test_clean_data_classifies_perfectly_whatever_the_maps(tmp_path: Path, pair: str, snr):
    """Noise-free (and nearly noise-free) particles of any two maps are classified without an
    error by the defaults. The noise power then falls by orders of magnitude from low to high
    resolution, and a reconstruction that dropped the voxels below 1e-3 of the volume's
    largest weight dropped every low-resolution voxel: maps of about 0, 52 % accuracy."""
    maps, pixel_size = _map_pair(pair)
    settings = SimulationSettings(n_particles=300, snr=snr, seed=2)
    star = simulate_particles(maps, pixel_size, tmp_path / "data", settings)
    summary = run_classify(star, tmp_path / "run", "logger=none", "logger.quiet=true")
    assert summary["accuracy"] == 1.0


class _SpoiltImages:
    """An image source that is not checked (the research API takes any): the image of table
    row ``row`` set to ``value``."""

    def __init__(self, images: ParticleImages, row: int, value: float) -> None:
        self.table, self.image_shape = images.table, images.image_shape
        self._images, self._row, self._value = images, row, value

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = self._images.read(rows).copy()
        out[np.asarray(rows) == self._row] = self._value
        return out


@pytest.mark.parametrize(
    ("spoil", "what"),
    [
        ("image=nan", "image"),
        ("image=inf", "image"),
        ("image=1e30", "image"),  # finite, but its square overflows float32
        ("ctf_scale=1e30", r"CTF \(defocus, B-factor, scale\)"),
        ("defocus_u_angstrom=nan", r"CTF \(defocus, B-factor, scale\)"),
        ("origin_angstrom=inf", "shift or pose"),
        ("rotation=nan", "shift or pose"),
    ],
)
def test_a_particle_no_reader_checked_is_refused_by_row(tmp_path: Path, spoil: str, what: str):
    """The second line of defence: a particle that no reader checked (the research API takes
    any image source and table) whose image, CTF, shift or pose is not finite is refused by
    its row before it can reach the sums and turn every map into NaN."""
    from cryotorch import ClassificationSettings, ModelSettings, OptimSettings
    from cryotorch.engine.classify import classify as classify_engine
    from cryotorch.errors import InputError

    star = simulate(tmp_path, 1.0, n=120)
    settings = ClassificationSettings(
        model=ModelSettings(num_classes=2), optim=OptimSettings(max_iterations=2), progress=False
    )
    field, value = spoil.split("=")
    with ParticleImages(read_particles(star)) as images:
        source = _SpoiltImages(images, row=57 if field == "image" else -1, value=float(value))
        if field != "image":  # the table's value, as no reader would have let it through
            values = getattr(images.table, field).copy()
            values[57] = float(value)
            source.table = dataclasses.replace(images.table, **{field: values})
        batcher = BatchMaker(source, 12, torch.device("cpu"))
        with pytest.raises(
            InputError,
            match=rf"particles\.mrcs: image 58 \(row 58 of the .*its {what} is not finite",
        ):
            classify_engine(batcher, settings)


def test_a_non_finite_log_likelihood_is_refused_by_its_row(tmp_path: Path):
    """Behind the batches' checks, the E-step's scores ``(b, k)`` are checked too, before the
    sums: the first row whose score for any class is not finite is named."""
    from types import SimpleNamespace

    from cryotorch.engine.passes import _refuse_non_finite
    from cryotorch.errors import InputError

    table = read_particles(simulate(tmp_path, 1.0, n=20))
    run = SimpleNamespace(batcher=SimpleNamespace(table=table))
    rows = np.array([4, 9, 13, 2])
    loglik = torch.zeros(4, 3)
    _refuse_non_finite(run, rows, loglik)  # all finite: nothing to say
    loglik[2, 1], loglik[3, 0] = -torch.inf, torch.nan
    with pytest.raises(InputError, match=r"particles\.star: row 14: the particle's log-lik"):
        _refuse_non_finite(run, rows, loglik)


def _two_optics_groups(star: Path, in_second: np.ndarray) -> None:
    """``star`` with a second optics group (a copy of the first) for the rows ``in_second``."""
    blocks = starfile.read(star, always_dict=True)
    optics = blocks["optics"]
    second = optics.iloc[0].copy()
    second["rlnOpticsGroup"], second["rlnOpticsGroupName"] = 2, "opticsGroup2"
    blocks["optics"] = optics.__class__([optics.iloc[0], second]).reset_index(drop=True)
    blocks["particles"]["rlnOpticsGroup"] = np.where(in_second, 2, 1)
    starfile.write(blocks, star, overwrite=True)


def test_an_optics_group_missing_from_a_mini_batch_keeps_its_noise(tmp_path: Path):
    """Online EM's mini-batches of ``batch_per_class x K`` particles can miss a small optics
    group: its noise power stays what it was (the mini-batch says nothing about it). It was
    set to 0 (1 / σ² = 10³⁸): every score of the group's particles -inf in the next
    mini-batch, and the run refused as if their images were broken (issue 21)."""
    star = simulate(tmp_path / "data", 0.05)
    _two_optics_groups(star, np.arange(300) < 3)  # 3 of 300
    classify(star, tmp_path / "run", "optim.batch_per_class=5")  # mini-batches of 10
    assert_all_finite(tmp_path / "run", 2)


def test_noise_of_a_group_without_pixels_is_the_previous_or_the_pooled():
    """:meth:`NoiseModel.from_power_sums` never gives a group without pixels a power of 0."""
    from cryotorch.engine.noise import NoiseModel

    sums = torch.tensor(
        [[8.0, 30.0, 60.0], [0.0, 0.0, 0.0], [4.0, 10.0, 60.0]], dtype=torch.float64
    )
    counts = torch.tensor(
        [[2.0, 6.0, 12.0], [0.0, 0.0, 0.0], [2.0, 6.0, 12.0]], dtype=torch.float64
    )
    pooled = NoiseModel.from_power_sums(sums, counts).power
    torch.testing.assert_close(pooled[1], torch.tensor([3.0, 40 / 12, 5.0]))
    torch.testing.assert_close(pooled[0], torch.tensor([4.0, 5.0, 5.0]))
    previous = NoiseModel(torch.full((3, 3), 7.0))
    kept = NoiseModel.from_power_sums(sums, counts, previous=previous).power
    torch.testing.assert_close(kept[1], torch.full((3,), 7.0))
    torch.testing.assert_close(kept[[0, 2]], pooled[[0, 2]])


@pytest.mark.parametrize("fill", [0.0, 5.0])
def test_a_blank_optics_group_takes_the_other_groups_noise(tmp_path: Path, fill: float):
    """An optics group whose images are all blank (zero or constant) has a noise power of 0
    past the DC term: it takes the other groups' (a blank image is classified like any
    other, as in test_all_zero_images_and_many_optics_groups). Its 1 / σ² of 10³⁸ made its
    particles' scores -inf and the run was refused as if their images held NaN (issue 21)."""
    star = simulate(tmp_path / "data", 0.05)
    in_second = np.arange(300) < 3
    _two_optics_groups(star, in_second)
    with mrcfile.mmap(star.parent / "particles.mrcs", "r+") as mrc:
        mrc.data[in_second] = fill
    classify(star, tmp_path / "run", "optim.batch_per_class=5")
    assert_all_finite(tmp_path / "run", 2)
