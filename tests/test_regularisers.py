"""The regulariser interface: RELION's T·τ² prior and cryoSPARC's half-set FSC filter."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import starfile
import torch

from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.engine.regularisers import (
    HalfSetFSCFilter,
    Regulariser,
    TauSquaredPrior,
    make_regulariser,
)
from cryotorch.errors import InputWarning
from cryotorch.io import read_particles
from cryotorch.physics.fourier import rfft_3d
from cryotorch.physics.masks import soft_sphere
from cryotorch.physics.projector import reconstruct_from_sums
from cryotorch.physics.shells import mean_per_shell_3d, shell_index_3d
from cryotorch.physics.slices import interleave_classes
from tests.run_helpers import run_classify, simulate_two_blob_classes

D, PAD, K = 12, 2, 2


def half_set_stats(first: torch.Tensor, second: torch.Tensor) -> SufficientStatistics:
    """Statistics with 2K channels whose halves hold the padded spectra ``first``/``second``
    ``(k, p, p, p // 2 + 1)`` complex, with unit weights."""
    p = PAD * D
    data = interleave_classes(torch.cat([first, second]))
    n_vox = p * p * (p // 2 + 1)
    weight = torch.ones(n_vox, 2 * K, dtype=torch.float64)
    stats = SufficientStatistics.zeros(2 * K, D, PAD, 1, "cpu", torch.float64)
    stats.data, stats.weight = data, weight
    return stats


def random_spectra(seed: int) -> torch.Tensor:
    p = PAD * D
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, p, p, p // 2 + 1, dtype=torch.complex128, generator=g)


def test_fsc_filter_keeps_agreeing_halves_and_removes_disagreeing_ones():
    mask = soft_sphere(D, D / 2 - 1, 1.0).double()
    regulariser = HalfSetFSCFilter()
    same = random_spectra(0)
    maps, columns = regulariser(half_set_stats(same, same), K, D, PAD, mask, 2.0)
    merged = half_set_stats(same, same).merged_halves(K)
    expected = reconstruct_from_sums(merged.data, merged.weight, D, PAD) * mask
    torch.testing.assert_close(maps, expected)  # FSC = 1: the filter is 1
    assert columns == {"class_001_fsc_resolution": 4.0, "class_002_fsc_resolution": 4.0}
    maps, columns = regulariser(half_set_stats(same, random_spectra(1)), K, D, PAD, mask, 2.0)
    assert maps.norm() < 0.5 * expected.norm()  # independent halves: most of it filtered out
    assert all(v > 4.0 for v in columns.values())


def test_tau2_prior_is_update_maps_of_the_merged_halves():
    mask = soft_sphere(D, D / 2 - 1, 1.0).double()
    stats = half_set_stats(random_spectra(2), random_spectra(3))
    maps, columns = TauSquaredPrior(4.0)(stats, K, D, PAD, mask, 2.0)
    torch.testing.assert_close(maps, update_maps(stats.merged_halves(K), D, PAD, 4.0, mask))
    assert columns == {}
    assert not TauSquaredPrior.half_sets and HalfSetFSCFilter.half_sets
    assert isinstance(make_regulariser("fsc"), Regulariser)
    with pytest.raises(
        ValueError, match=r"model\.regulariser must be one of tau2, fsc, denoise, got 'wiener'"
    ):
        make_regulariser("wiener")


def test_fsc_regularised_run_classifies_and_reports_fsc_resolution(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path / "data", 400, 1.0, seed=4)
    overrides = [
        "model.regulariser=fsc",
        "model.target_resolution=9",
        "logger=none",
        "logger.quiet=true",
        "optim.max_iterations=6",
        "posterior.similarity.anneal_end=3",
    ]
    summary = run_classify(star, tmp_path / "run", *overrides)
    assert summary["accuracy"] >= 0.95
    with open(tmp_path / "run" / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k in (1, 2):
            resolution = float(row[f"class_{k:03d}_fsc_resolution"])
            assert 9.0 <= resolution <= 72.0  # between the working Nyquist and the box


@pytest.mark.parametrize("d", [12, 13])
def test_mean_power_per_shell_weighs_as_its_docstring_says(d: int):
    """``hermitian=True`` (the M-step's τ²) is the mean over the full spectrum; ``False`` (the
    gradient penalty's) the mean over the stored half, corners in the Nyquist shell if asked."""
    g = torch.Generator().manual_seed(d)
    maps = torch.randn(2, d, d, d, dtype=torch.float64, generator=g)
    full = torch.fft.fftn(maps, dim=(-3, -2, -1)).abs() ** 2  # (k, d, d, d), every frequency
    full_shells = shell_index_3d_full(d)
    n = d // 2 + 1
    keep = full_shells < n
    expected = torch.stack(
        [torch.bincount(full_shells[keep], f[keep], n) for f in full]
    ) / torch.bincount(full_shells[keep], minlength=n)
    half = rfft_3d(maps).abs() ** 2  # the project's centred layout
    torch.testing.assert_close(mean_per_shell_3d(half, hermitian=True), expected)
    shells = shell_index_3d(d).clamp_max(d // 2).flatten()
    unweighted = torch.stack([torch.bincount(shells, h.flatten(), n) for h in half])
    torch.testing.assert_close(
        mean_per_shell_3d(half, hermitian=False, corners_in_nyquist=True),
        unweighted / torch.bincount(shells, minlength=n),
    )


def shell_index_3d_full(d: int) -> torch.Tensor:
    """Shell of every entry of a full ``(d, d, d)`` fftn (fft order)."""
    f = torch.fft.fftfreq(d, 1 / d, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
    return torch.sqrt(kx**2 + ky**2 + kz**2).round().long()


def test_a_constant_half_set_column_still_gives_two_half_sets(tmp_path: Path):
    """A particle file whose rlnRandomSubset is 1 for every particle (one half-set empty) is
    read with a warning and the engine makes its own halves: the FSC filter then sees two
    half-sets of about half the particles each and reports resolutions finer than the box
    (an empty half gives FSC 0 everywhere: the box, 72 Å)."""
    star = simulate_two_blob_classes(tmp_path / "data", 400, 1.0, seed=4)
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"]["rlnRandomSubset"] = 1
    starfile.write(blocks, star, overwrite=True)
    with pytest.warns(InputWarning, match="rlnRandomSubset"):
        table = read_particles(star)
    assert (table.random_subset == 0).all()  # none: the engine's own seeded split
    overrides = ["model.regulariser=fsc", "model.target_resolution=9", "logger=none"]
    overrides += ["logger.quiet=true", "optim.max_iterations=4"]
    summary = run_classify(star, tmp_path / "run", *overrides)
    assert summary["accuracy"] >= 0.95
    with open(tmp_path / "run" / "iterations.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert all(float(last[f"class_{k:03d}_fsc_resolution"]) < 30.0 for k in (1, 2))
