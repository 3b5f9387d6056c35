"""The centred rfft convention, shells, shifts, masks and FSC."""

from __future__ import annotations

import math

import pytest
import torch

from cryotorch.physics.fourier import (
    cropped_box_for_resolution,
    cropped_rfft_2d,
    fourier_crop_2d,
    fourier_crop_3d,
    fourier_pad_2d,
    fourier_pad_3d,
    irfft_2d,
    irfft_3d,
    rfft_2d,
    rfft_3d,
)
from cryotorch.physics.fsc import fourier_shell_correlation
from cryotorch.physics.masks import (
    distance_to_mask,
    lowpass_3d,
    mask_from_map,
    soft_sphere,
    solvent_sphere,
)
from cryotorch.physics.shells import hermitian_weights, shell_index_2d, shell_index_3d, shell_sum
from cryotorch.physics.shifts import phase_shift_2d
from tests.physics_helpers import DEVICES, blob_volume


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [16, 17])
def test_round_trips_and_centre(device, d):
    x = torch.randn(3, d, d, dtype=torch.float64, device=device)
    torch.testing.assert_close(irfft_2d(rfft_2d(x), d), x)
    v = torch.randn(2, d, d, d, dtype=torch.float64, device=device)
    torch.testing.assert_close(irfft_3d(rfft_3d(v), d), v)
    # A point at the centre has a flat, real transform; the DC term sits at [d // 2, 0].
    delta = torch.zeros(d, d, dtype=torch.float64, device=device)
    delta[d // 2, d // 2] = 1
    torch.testing.assert_close(
        rfft_2d(delta), torch.ones(d, d // 2 + 1, dtype=torch.complex128, device=device)
    )
    assert float(rfft_2d(x)[0, d // 2, 0].real) == pytest.approx(float(x[0].sum()))


def test_phase_shift_moves_content_like_roll():
    d = 16
    x = torch.randn(2, d, d, dtype=torch.float64)
    shift = torch.tensor([[3.0, -2.0], [-5.0, 1.0]], dtype=torch.float64)
    moved = irfft_2d(rfft_2d(x) * phase_shift_2d(d, shift), d)
    for i in range(2):
        expected = torch.roll(x[i], shifts=(int(shift[i, 1]), int(shift[i, 0])), dims=(0, 1))
        torch.testing.assert_close(moved[i], expected)


def test_crop_then_pad_keeps_band_limited_image():
    d, d_small = 32, 16
    spectrum = rfft_2d(torch.randn(d, d, dtype=torch.float64))
    band = shell_index_2d(d) < d_small // 2 - 1
    limited = irfft_2d(spectrum * band, d)
    small = irfft_2d(fourier_crop_2d(rfft_2d(limited), d_small), d_small)
    torch.testing.assert_close(small.mean(), limited.mean())  # same values, coarser pixels
    back = irfft_2d(fourier_pad_2d(rfft_2d(small), d), d)
    torch.testing.assert_close(back, limited)


def test_shell_sums_count_friedel_mates():
    d = 16
    x = torch.randn(d, d, dtype=torch.float64)
    power = rfft_2d(x).abs() ** 2 * hermitian_weights(d).to(torch.float64)
    total = shell_sum(power, shell_index_2d(d), 10 * d).sum()
    assert float(total) == pytest.approx(d * d * float((x**2).sum()))  # Parseval


def test_fsc_properties():
    d = 24
    a = blob_volume(d, (2, -3, 1), 2.0)
    torch.testing.assert_close(
        fourier_shell_correlation(a, 3 * a), torch.ones(d // 2 + 1, dtype=a.dtype)
    )
    noise = torch.randn(2, d, d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fsc = fourier_shell_correlation(noise[0], noise[1])
    assert fsc[4:].abs().max() < 0.25  # independent noise: near zero (shells 1-3 have few voxels)


def test_mask_and_lowpass():
    d = 32
    m = soft_sphere(d, 10, 4)
    assert m[d // 2, d // 2, d // 2] == 1 and m[0, 0, 0] == 0
    assert float(m[d // 2, d // 2, d // 2 + 12]) == pytest.approx(0.5, abs=1e-6)
    v = torch.randn(d, d, d, dtype=torch.float64)
    low = lowpass_3d(v, 8.0, 1.0, edge_shells=2.0)  # passes |k| <= 4, zero beyond |k| = 6
    torch.testing.assert_close(fourier_shell_correlation(low, v)[:4], torch.ones(4, dtype=v.dtype))
    power = shell_sum(rfft_3d(low).abs() ** 2, shell_index_3d(d), d)
    assert power[7:].max() < 1e-20 * power[0]


@pytest.mark.parametrize(("d", "pixel_size"), [(64, 1.5), (24, 4.0), (46, 96 / 46)])
def test_the_solvent_sphere_is_the_same_in_angstrom_at_any_crop(d, pixel_size):
    # 86.4 Å across with an 8 Å edge, at the full box (1.5 Å) and two Fourier crops of it:
    # 1 to 43.2 Å from the centre, ½ at 47.2 Å, 0 from 51.2 Å.
    mask = solvent_sphere(d, pixel_size, 86.4, 8.0)
    r = torch.arange(d - d // 2) * pixel_size  # Å along x from the centre
    profile = mask[d // 2, d // 2, d // 2 :]
    assert (profile[r <= 43.2] == 1).all() and (profile[r >= 51.2] == 0).all()
    expected = 0.5 * (1 + torch.cos(math.pi * (r - 43.2) / 8.0))
    between = (r > 43.2) & (r < 51.2)
    torch.testing.assert_close(profile[between], expected[between], atol=1e-5, rtol=0)


def test_crop_3d_samples_a_smooth_volume_on_the_coarser_grid():
    # A wide Gaussian at box 32 cropped to 16 is the same Gaussian sampled at twice the pixel
    # size (centres coincide: pixel d // 2 in both boxes).
    fine = blob_volume(32, (2.0, -4.0, 3.0), 3.0)
    coarse = blob_volume(16, (1.0, -2.0, 1.5), 1.5)
    torch.testing.assert_close(fourier_crop_3d(fine, 16), coarse, atol=2e-3, rtol=0)
    assert fourier_crop_3d(fine, 32) is fine


def test_pad_3d_samples_a_smooth_volume_on_the_finer_grid():
    """The adjoint direction of the test above: the Gaussian at box 16 padded to 32 is the
    Gaussian sampled at half the pixel size; an odd box too."""
    coarse = blob_volume(16, (1.0, -2.0, 1.5), 1.5)
    fine = blob_volume(32, (2.0, -4.0, 3.0), 3.0)
    torch.testing.assert_close(fourier_pad_3d(coarse, 32), fine, atol=3e-3, rtol=0)
    odd = blob_volume(15, (1.0, -2.0, 1.5), 1.5)
    torch.testing.assert_close(fourier_pad_3d(odd, 30), blob_volume(30, (2.0, -4.0, 3.0), 3.0),
                               atol=3e-3, rtol=0)  # fmt: skip
    assert fourier_pad_3d(coarse, 16) is coarse


@pytest.mark.parametrize(("d", "d_out"), [(12, 20), (12, 13), (11, 24), (20, 64)])
def test_crop_undoes_pad_but_for_the_nyquist_planes(d: int, d_out: int):
    """Any volume padded and cropped back is itself, without its Nyquist planes (an even
    box's frequency -d/2, which has no partner to be padded with); the padded volume is real
    and has no power beyond the small box's Nyquist."""
    torch.manual_seed(d + d_out)
    volume = torch.randn(2, d, d, d, dtype=torch.float64)
    padded = fourier_pad_3d(volume, d_out)
    assert padded.shape == (2, d_out, d_out, d_out) and padded.dtype == torch.float64
    without_nyquist = rfft_3d(volume)
    if d % 2 == 0:
        without_nyquist[..., 0, :, :] = 0
        without_nyquist[..., :, 0, :] = 0
        without_nyquist[..., d // 2] = 0
    expected = irfft_3d(without_nyquist, d)
    torch.testing.assert_close(fourier_crop_3d(padded, d), expected, atol=1e-12, rtol=0)
    # The padding's spectrum is the small one's, scaled, and zero elsewhere.
    big = rfft_3d(padded)
    start = d_out // 2 - d // 2
    inside = torch.zeros_like(big, dtype=torch.bool)
    inside[..., start : start + d, start : start + d, : d // 2 + 1] = True
    assert big[~inside].abs().max() < 1e-10


def test_cropped_box_for_resolution():
    # 128 px of 1.0 Å cropped for 8 Å: Nyquist 8 Å needs a box of 32 (pixel 4 Å).
    assert cropped_box_for_resolution(128, 1.0, 8.0) == (32, 4.0)
    d_out, px = cropped_box_for_resolution(100, 1.3, 7.0)
    assert d_out % 2 == 0 and 2 * px <= 7.0 and 2 * 1.3 * 100 / (d_out - 2) > 7.0
    assert cropped_box_for_resolution(64, 2.0, 3.0) == (64, 2.0)  # never larger than the box


def test_distance_to_mask_is_scipys_exact_euclidean_distance():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the outside reference")
    binary = torch.rand(24, 24, 24, generator=torch.Generator().manual_seed(1)) > 0.998
    expected = ndimage.distance_transform_edt(~binary.numpy())
    torch.testing.assert_close(
        distance_to_mask(binary).double(), torch.from_numpy(expected), atol=1e-5, rtol=0
    )
    assert torch.isinf(distance_to_mask(torch.zeros(4, 4, 4, dtype=torch.bool))).all()


def test_mask_from_map_follows_threshold_extension_and_soft_edge():
    # A Gaussian of σ = 4 px (1 Å px): above 0.2 of its peak within r0 = σ √(2 ln 5) = 7.18 Å;
    # the mask is 1 to r0 + 3 Å, ½ at r0 + 3 + 2 Å, 0 from r0 + 3 + 4 Å.
    d = 48
    volume = blob_volume(d, (0, 0, 0), 4.0).float()
    mask = mask_from_map(volume, 1.0, 0.2, 3.0, 4.0, lowpass_angstrom=2.0)
    r0 = 4.0 * math.sqrt(2 * math.log(5))
    profile = mask[d // 2, d // 2, d // 2 :]  # along x from the centre, 1 Å steps
    r = torch.arange(len(profile), dtype=torch.float32)
    assert (profile[r <= r0 + 3 - 1] == 1).all()
    assert (profile[r >= r0 + 3 + 4 + 1] == 0).all()
    edge = (r > r0 + 3 + 1) & (r < r0 + 3 + 3)
    assert ((profile[edge] > 0.1) & (profile[edge] < 0.9)).all()


@pytest.mark.parametrize(("d", "d_out"), [(64, 24), (64, 64), (33, 12), (10, 7)])
def test_cropped_rfft_is_the_crop_of_the_centred_rfft(d, d_out):
    images = torch.randn(3, d, d, dtype=torch.float64)
    torch.testing.assert_close(
        cropped_rfft_2d(images, d_out), fourier_crop_2d(rfft_2d(images), d_out), rtol=0, atol=1e-9
    )
