"""The simulator: overrides as documented, reproducibility, proportions, SNR, atomic models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryotorch.io import ParticleImages, read_map, read_particles, write_map
from cryotorch.physics.fsc import fourier_shell_correlation
from cryotorch.simulate.atomic import atomic_model_to_map, builtin_structures
from cryotorch.simulate.particles import SimulationSettings, simulate_particles
from tests.physics_helpers import blob_volume


def two_maps(d: int = 20) -> np.ndarray:
    a = blob_volume(d, (3, 0, -2), 2.0) + blob_volume(d, (-3, 2, 1), 1.5)
    b = a + blob_volume(d, (0, -4, 3), 1.5)
    return torch.stack([a, b]).float().numpy()


def test_command_line_overrides_as_documented(tmp_path: Path):
    maps = two_maps()
    write_map(tmp_path / "a.mrc", maps[0], 2.0)
    write_map(tmp_path / "b.mrc", maps[1], 2.0)
    out = tmp_path / "sim"
    args = [
        f"maps=[{tmp_path / 'a.mrc'},{tmp_path / 'b.mrc'}]",
        "n_particles=50",
        "snr=0.1",
        "proportions=[0.5,0.5]",
        f"output_dir={out}",
        "seed=4",
    ]
    code = "from cryotorch.cli.simulate import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    table = read_particles(out / "particles.star")
    assert len(table) == 50
    truth = np.loadtxt(out / "true_classes.txt", dtype=int)
    assert truth.shape == (50,) and set(truth) <= {1, 2}
    with ParticleImages(table) as images:
        assert images.read(np.arange(50)).shape == (50, 20, 20)
    np.testing.assert_allclose(read_map(out / "class_002.mrc")[0], maps[1])


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path):
    settings = SimulationSettings(n_particles=40, snr=0.1, seed=11, chunk_size=16)
    for name in ("a", "b"):
        simulate_particles(two_maps(), 2.0, tmp_path / name, settings)
    simulate_particles(
        two_maps(), 2.0, tmp_path / "c", SimulationSettings(n_particles=40, snr=0.1, seed=12)
    )
    for f in ("particles.mrcs", "particles.star", "true_classes.txt", "class_001.mrc"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "particles.mrcs").read_bytes() != (
        tmp_path / "c" / "particles.mrcs"
    ).read_bytes()


def test_proportions_and_noise_free_images_do_not_depend_on_chunks(tmp_path: Path):
    base = dict(n_particles=2000, snr=float("inf"), proportions=(0.8, 0.2), seed=3)
    simulate_particles(
        two_maps(16), 2.0, tmp_path / "a", SimulationSettings(**base, chunk_size=2000)
    )
    simulate_particles(
        two_maps(16), 2.0, tmp_path / "b", SimulationSettings(**base, chunk_size=300)
    )
    truth = np.loadtxt(tmp_path / "a" / "true_classes.txt", dtype=int)
    assert abs((truth == 1).mean() - 0.8) < 0.03
    assert (tmp_path / "a" / "particles.mrcs").read_bytes() == (
        tmp_path / "b" / "particles.mrcs"
    ).read_bytes()


def test_snr_is_signal_variance_over_noise_variance(tmp_path: Path):
    settings = dict(n_particles=400, seed=5)
    simulate_particles(
        two_maps(), 2.0, tmp_path / "clean", SimulationSettings(**settings, snr=float("inf"))
    )
    simulate_particles(two_maps(), 2.0, tmp_path / "noisy", SimulationSettings(**settings, snr=0.5))
    images = {}
    for name in ("clean", "noisy"):
        with ParticleImages(read_particles(tmp_path / name / "particles.star")) as reader:
            images[name] = reader.read(np.arange(400)).astype(np.float64)
    signal = images["clean"].var(axis=(1, 2)).mean()
    noise = (images["noisy"] - images["clean"]).var()
    assert noise == pytest.approx(signal / 0.5, rel=0.02)


def test_bad_settings_are_refused(tmp_path: Path):
    for bad, message in [
        ({"snr": 0.0}, r"snr must be > 0 \(inf: no noise\), got 0\.0"),
        ({"n_particles": 0}, r"n_particles must be >= 1, got 0"),
        ({"voltage_kv": 0.0}, r"voltage_kv must be in \[10, 3000\] kV"),
        ({"defocus_min_angstrom": 3e4}, r"defocus_min_angstrom \(30000\.0\) must be <= "),
        ({"shift_sigma_angstrom": -1.0}, r"shift_sigma_angstrom must be in \[0, 10000\) Å"),
    ]:
        with pytest.raises(ValueError, match=message):
            SimulationSettings(**bad)
    with pytest.raises(ValueError, match="proportions: expected 2 non-negative numbers"):
        simulate_particles(
            two_maps(), 2.0, tmp_path, SimulationSettings(proportions=(1.0, 1.0, 1.0))
        )


def test_atomic_model_to_map_puts_density_on_the_atoms(tmp_path: Path):
    pdb = tmp_path / "three.pdb"
    lines = [
        "CRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1",
        "ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00 20.00           C",
        "ATOM      2  CA  ALA A   2       6.000   0.000   0.000  1.00 20.00           C",
        "ATOM      3  SG  CYS A   3       0.000   9.000   0.000  1.00 20.00           S",
        "END",
    ]
    pdb.write_text("\n".join(lines) + "\n")
    vol = atomic_model_to_map(pdb, box=32, pixel_size=1.0, bfactor=10.0, centre=np.zeros(3))
    # [z, y, x]: the sulphur (16 electrons) at y = +9 Å is the densest point.
    assert np.unravel_index(vol.argmax(), vol.shape) == (16, 25, 16)
    assert vol[16, 16, 22] > 0.5 * vol[16, 16, 16] > 0  # the second carbon at x = +6 Å
    assert vol[16, 16, 19] < 0.2 * vol[16, 16, 16]  # and nothing between them


def test_builtin_structures_are_two_distinct_conformations():
    open_, closed = builtin_structures()
    from cryotorch.simulate.atomic import read_model_coordinates

    centre = read_model_coordinates(open_).mean(0)
    ref = read_model_coordinates(open_, ca_only=True)
    a = atomic_model_to_map(open_, 48, 2.0, 50.0, centre=centre)
    b = atomic_model_to_map(closed, 48, 2.0, 50.0, centre=centre, superpose_onto=ref)
    fsc = fourier_shell_correlation(torch.from_numpy(a).double(), torch.from_numpy(b).double())
    assert fsc[1] > 0.9  # the same protein, superposed: the low-resolution envelope agrees
    assert fsc[4:12].mean() < 0.7  # the domains have moved
