"""Images of one box and pixel size on the working grid of another (issue 22's mixed optics):
against the same object sampled directly at the working sampling, and against the simulator
run at both samplings."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryotorch.physics.fourier import cropped_rfft_2d, fourier_pad_3d, rfft_2d
from cryotorch.physics.resampling import (
    GroupResampling,
    _border_mean,
    _zoom_rfft_2d,
    resample_rfft_2d,
)
from cryotorch.physics.shells import shell_index_2d
from cryotorch.simulate.atomic import atomic_model_to_map, builtin_structures
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

# Gaussians of σ 5 Å, 6.5 Å at most from the centre: at 2.4 Å pixels their spectra past
# Nyquist are below 1e-9 of the peak, and they vanish (1e-10) at every box edge below: sampled
# at any pixel size, they are the same band-limited image to float tolerance.
BLOBS = [((0.0, 0.0), 1.0), ((4.3, -2.1), -0.5), ((-3.2, 5.5), 0.7), ((2.0, 4.5), 0.4)]
SIGMA = 5.0


def blobs(d: int, pixel_size: float) -> torch.Tensor:
    """``(1, d, d)`` float64: :data:`BLOBS` sampled at ``pixel_size`` Å about pixel ``d // 2``."""
    c = (torch.arange(d, dtype=torch.float64) - d // 2) * pixel_size
    y, x = torch.meshgrid(c, c, indexing="ij")
    image = torch.zeros(d, d, dtype=torch.float64)
    for (cx, cy), amplitude in BLOBS:
        image += amplitude * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * SIGMA**2))
    return image[None]


WORK = {"2.4 Å box 40": (40, 2.4), "1.2 Å box 80": (80, 1.2)}
GROUPS = {
    "same extent, finer (1.2 Å box 80)": (80, 1.2),
    "same extent, 1.5 Å box 64": (64, 1.5),
    "larger extent, whole pixels (1.5 Å box 72: cut to 64)": (72, 1.5),
    "smaller extent, whole pixels (1.5 Å box 56: padded to 64)": (56, 1.5),
    "smaller extent, zoom DFT (1.35 Å box 70)": (70, 1.35),
    "larger extent, zoom DFT (1.1 Å box 90)": (90, 1.1),
    "coarser pixel, same extent (2.0 Å box 48)": (48, 2.0),
    "odd box, zoom DFT (2.1 Å box 37)": (37, 2.1),
    "magnification-refined, zoom DFT (1.5012 Å box 64)": (64, 1.5012),
    "the working sampling itself (2.4 Å box 40)": (40, 2.4),
}


@pytest.mark.parametrize("work", WORK.values(), ids=WORK.keys())
@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
def test_a_group_resampled_is_the_image_sampled_at_the_working_sampling(group, work):
    (box, psize), (d_out, psize_out) = group, work
    resampling = GroupResampling(box, psize, d_out, psize_out)
    got = resampling(blobs(box, psize))
    direct = rfft_2d(blobs(d_out, psize_out))
    # Past the group's own Nyquist it measured nothing: zero there.
    inside = shell_index_2d(d_out).clamp_max(d_out // 2) <= resampling.max_shell
    assert not got[:, ~inside].any()
    err = (got - direct)[:, inside].abs().max() / direct.abs().max()
    assert float(err) < 1e-7, (resampling, float(err))


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
def test_a_constant_background_stays_in_the_dc_term(group):
    # A cut or pad of an image on a background of 5 (unnormalised images): the background
    # is taken off first, so it adds nothing past DC, which the likelihood leaves out.
    (box, psize), (d_out, psize_out) = group, WORK["2.4 Å box 40"]
    resampling = GroupResampling(box, psize, d_out, psize_out)
    plain = resampling(blobs(box, psize))
    offset = resampling(blobs(box, psize) + 5.0)
    dc = (d_out // 2, 0)
    offset[(0, *dc)] = plain[(0, *dc)]
    err = (offset - plain).abs().max() / plain.abs().max()
    assert float(err) < 1e-9, (resampling, float(err))


def test_what_the_working_grid_holds_of_each_group():
    # Working grid: box 80 at 1.2 Å (96 Å). Nyquist and independent pixels per group.
    same = GroupResampling(64, 1.5, 80, 1.2)  # 96 Å, Nyquist 3 Å = 32 working pixels
    assert (same.exact, same.window, same.information, same.max_shell) == (True, 64, 1.0, 31)
    wide = GroupResampling(72, 1.5, 80, 1.2)  # 108 Å, cut to 96 Å: independent pixels
    assert (wide.exact, wide.window, wide.information) == (True, 64, 1.0)
    narrow = GroupResampling(56, 1.5, 80, 1.2)  # 84 Å, padded: (84 / 96)² of the pixels
    assert narrow.window == 56 and narrow.information == pytest.approx((84 / 96) ** 2)
    odd = GroupResampling(70, 1.35, 80, 1.2)  # 94.5 Å: the zoom DFT
    assert not odd.exact and odd.information == pytest.approx((94.5 / 96) ** 2)
    finer = GroupResampling(100, 0.96, 80, 1.2)  # finer pixel: fills the grid
    assert finer.max_shell == 40 and finer.information == 1.0
    refined = GroupResampling(64, 1.5012, 80, 1.2)  # 96.08 Å: every pixel kept
    assert not refined.exact and refined.window == 64 and refined.information == 1.0


def test_the_frames_own_group_is_the_one_group_fourier_crop_bit_for_bit():
    images = torch.randn(5, 64, 64)
    got = GroupResampling(64, 1.5, 40, 1.5 * 64 / 40)(images)
    assert torch.equal(got, cropped_rfft_2d(images, 40))


@pytest.mark.parametrize(("box", "psize", "n"), [(72, 1.5, 64), (56, 1.5, 64), (80, 1.2, 80)])
def test_the_zoom_dft_is_the_fft_where_both_apply(box, psize, n):
    # A cut (or pad) by whole pixels and an FFT against the zoom DFT of the same window.
    images = torch.randn(3, box, box, dtype=torch.float64)
    images -= _border_mean(images)[:, None, None]  # as the resampling does before a cut or pad
    psize_out = n * psize / 40
    fft = resample_rfft_2d(images, psize, 40, psize_out)
    zoom = _zoom_rfft_2d(images, min(box, n), psize, 40, n * psize) * (psize / psize_out) ** 2
    torch.testing.assert_close(fft, zoom, rtol=0, atol=1e-9 * float(fft.abs().max()))


def _simulate(folder: Path, maps: np.ndarray, psize: float) -> torch.Tensor:
    """The simulator's noise-free images of ``maps (1, d, d, d)`` at ``psize``: 12 particles,
    seed 4 (the same poses, shifts in Å and CTFs at any sampling)."""
    settings = SimulationSettings(n_particles=12, snr=math.inf, seed=4)
    star = simulate_particles(maps, psize, folder, settings)
    with mrcfile.open(star.parent / "particles.mrcs") as mrc:
        return torch.as_tensor(np.array(mrc.data), dtype=torch.float64)


def test_a_group_simulated_at_its_sampling_matches_the_simulation_at_the_working_one(
    tmp_path: Path,
):
    # The same map (AdK at 2.4 Å, box 40, and exactly that map Fourier-padded to 1.5 Å box 64
    # and 1.2 Å box 80: 96 Å each), the same particles (poses, shifts, CTFs): each group's
    # images resampled onto the working grid (2.4 Å, box 40) are the working simulation. The
    # simulator's images are sums of density over voxels, so they are scaled by the pixel size
    # to one intensity scale. What is left is the projector's own sampling (its gridding
    # correction is sampled at each pixel size): ~1e-3 of the peak, more near Nyquist.
    d_out, psize_out = 40, 2.4
    work_map = atomic_model_to_map(builtin_structures()[0], d_out, psize_out, 50.0)[None]
    direct = rfft_2d(_simulate(tmp_path / "work", work_map, psize_out))
    low = shell_index_2d(d_out) <= 15  # to 3/4 of Nyquist
    for box, psize in ((64, 1.5), (80, 1.2)):
        group_map = fourier_pad_3d(torch.as_tensor(work_map, dtype=torch.float64), box)
        images = _simulate(tmp_path / f"box{box}", group_map.float().numpy(), psize)
        got = resample_rfft_2d(images, psize, d_out, psize_out) * (psize / psize_out)
        err = (got - direct)[:, low].abs().max() / direct.abs().max()
        assert float(err) < 1e-2, (box, psize, float(err))
        # Without the resampling (the group's spectrum read as if at the working pixel size)
        # it is another image altogether.
        wrong = rfft_2d(images)[:, box // 2 - d_out // 2 : box // 2 + d_out // 2, : d_out // 2 + 1]
        assert float((wrong - direct)[:, low].abs().max() / direct.abs().max()) > 0.1
