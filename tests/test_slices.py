"""Central-slice extraction and insertion: reference, adjointness, physics, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryotorch import conventions as cv
from cryotorch.physics.fourier import frequency_grid_2d, rfft_2d, rfft_3d
from cryotorch.physics.fsc import fourier_shell_correlation
from cryotorch.physics.masks import soft_sphere
from cryotorch.physics.projector import (
    gridding_kernel,
    pad_volume,
    prepare_volumes,
    project,
    reconstruct_from_sums,
)
from cryotorch.physics.slices import (
    KERNEL_CHOICES,
    as_kernels,
    extract_central_slices,
    extract_central_slices_reference,
    insert_central_slices,
    insert_for_reconstruction,
    interleave_classes,
    slice_geometry,
)
from tests.physics_helpers import DEVICES, blob_projection, blob_volume, random_rotations


def full_spectrum(maps: torch.Tensor, pad: int) -> torch.Tensor:
    d = maps.shape[-1]
    v = pad_volume(maps / gridding_kernel(d, pad, maps.device, maps.dtype), pad)
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(v, dim=dims), dim=dims), dim=dims)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_extraction_matches_grid_sample_reference(device):
    d, pad = 16, 2
    maps = torch.randn(3, d, d, d, dtype=torch.float64, device=device)
    rot = random_rotations(5).to(device)
    fast = extract_central_slices(prepare_volumes(maps, pad), slice_geometry(rot, d, pad))
    ref = extract_central_slices_reference(full_spectrum(maps, pad), rot, d, pad)
    # The reference's full grid has no +Nyquist plane: compare inside |k| < d/2 - 1.
    inside = frequency_grid_2d(d, device).norm(dim=-1) < d / 2 - 1
    torch.testing.assert_close(
        fast[..., inside], ref[..., inside], rtol=0, atol=1e-10 * ref.abs().max()
    )


def test_extraction_matches_torch_fourier_slice():
    tfs = pytest.importorskip("torch_fourier_slice")
    d = 24
    vol = torch.randn(d, d, d)
    rot = random_rotations(4, seed=3, dtype=torch.float32)
    ours = extract_central_slices(
        interleave_classes(rfft_3d(vol)[None]), slice_geometry(rot, d, pad=1)
    )[:, 0]
    # torch-fourier-slice takes matrices acting on (x, y, z) slice coordinates: RELION's A^T.
    theirs = tfs.extract_central_slices_rfft_3d(rfft_3d(vol), rot.transpose(1, 2))
    inside = frequency_grid_2d(d).norm(dim=-1) < d / 2 - 1
    torch.testing.assert_close(
        ours[:, inside], theirs[:, inside], rtol=0, atol=1e-5 * float(ours.abs().max())
    )


@pytest.mark.parametrize("device", DEVICES)
def test_insertion_is_the_adjoint_of_extraction(device):
    d, pad, k = 12, 2, 3
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n_vox, 2 * k, dtype=torch.float64, device=device, generator=g)
    y = torch.randn(7, k, d, d // 2 + 1, dtype=torch.complex128, device=device, generator=g)
    geometry = slice_geometry(random_rotations(7, seed=1).to(device), d, pad)
    px = extract_central_slices(x, geometry)
    pty, _ = insert_central_slices(y, geometry, n_vox)
    lhs = (px * y.conj()).real.sum()
    rhs = (x * pty).sum()  # the real inner product of interleaved (re, im) pairs
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_projection_of_off_centre_blob_matches_line_integral(device):
    d, sigma, centre = 48, 2.0, torch.tensor([9.0, -6.0, 4.0], dtype=torch.float64)
    maps = blob_volume(d, centre.tolist(), sigma, device=device)[None]
    rot = random_rotations(6, seed=2).to(device)
    images = project(maps, rot)[:, 0]
    for i in range(6):
        expected = blob_projection(d, rot[i].cpu() @ centre, sigma, device=device)
        error = (images[i] - expected).abs().max() / expected.max()
        # Trilinear interpolation with gridding correction: about 1.2 % at 12 px from the centre.
        assert error < 0.02, f"rotation {i}: max error {error:.4f} of the peak"
        assert torch.corrcoef(torch.stack([images[i].flatten(), expected.flatten()]))[0, 1] > 0.9995


def test_rotation_centre_is_fixed():
    d = 32
    maps = blob_volume(d, (0, 0, 0), 1.5)[None]
    images = project(maps, random_rotations(8, seed=4))[:, 0]
    yy, xx = torch.meshgrid(
        torch.arange(d, dtype=torch.float64), torch.arange(d, dtype=torch.float64), indexing="ij"
    )
    for image in images:
        w = image.clamp_min(0)
        centroid = torch.stack([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        torch.testing.assert_close(
            centroid, torch.tensor([d / 2, d / 2], dtype=torch.float64), atol=1e-2, rtol=0
        )


def test_gradcheck_extraction_and_insertion():
    d, pad, k = 6, 2, 2
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    geometry = slice_geometry(random_rotations(2, seed=5), d, pad)
    table = torch.randn(n_vox, 2 * k, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: extract_central_slices(t, geometry), (table,), fast_mode=True
    )
    slices = torch.randn(2, k, d, d // 2 + 1, dtype=torch.complex128, requires_grad=True)
    weights = torch.rand(2, k, d, d // 2 + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, w: insert_central_slices(s, geometry, n_vox, w), (slices, weights), fast_mode=True
    )


def test_insert_then_divide_reconstructs_the_map():
    d, pad = 24, 2
    g = torch.Generator().manual_seed(0)  # white noise in a sphere: signal in every shell
    truth = (
        torch.randn(d, d, d, dtype=torch.float64, generator=g)
        * soft_sphere(d, d / 2 - 4, 2).double()
    )
    rot = random_rotations(800, seed=6)
    geometry = slice_geometry(rot, d, pad)
    slices = rfft_2d(project(truth[None], rot, pad, geometry))
    data, weight = insert_for_reconstruction(
        slices, geometry, (pad * d) ** 2 * (pad * d // 2 + 1), torch.ones_like(slices.real)
    )
    recon = reconstruct_from_sums(data, weight, d, pad)[0]
    fsc = fourier_shell_correlation(recon, truth)
    assert fsc[: d // 2].min() > 0.99, fsc  # measured: >= 0.996 below Nyquist, 0.83 at it


def test_relion_matrix_convention_in_projection():
    # rot = 90: a point on the map's +x axis projects onto the image's -y axis.
    d = 32
    maps = blob_volume(d, (8, 0, 0), 1.5)[None]
    rot = torch.as_tensor(cv.euler_to_rotation(np.array([90.0]), np.array([0.0]), np.array([0.0])))
    image = project(maps, rot)[0, 0]
    iy, ix = np.unravel_index(int(image.argmax()), image.shape)
    assert (ix - d // 2, iy - d // 2) == (0, -8)


@pytest.mark.parametrize(
    ("kernels", "dtype", "k"),  # torch.compile costs ~20 s per dtype: one is enough to check it
    [
        ("numba", torch.float32, 3),
        ("numba", torch.float64, 3),
        ("numba", torch.float32, 1),  # the kernels' own one-class paths
        ("numba", torch.float64, 1),
        ("compiled", torch.float32, 3),
    ],
)
def test_every_kernel_choice_agrees_with_the_torch_reference(kernels, dtype, k):
    d, pad = 12, 2
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n_vox, 2 * k, generator=g, dtype=dtype)
    slices = torch.randn(9, k, d, d // 2 + 1, dtype=complex_dtype, generator=g)
    weights = torch.rand(9, k, d, d // 2 + 1, generator=g, dtype=dtype)
    rot = random_rotations(9, seed=2, dtype=dtype)

    def run_all(kernels: str):
        geometry = slice_geometry(rot, d, pad, kernels)
        inserted = insert_central_slices(slices, geometry, n_vox, weights)
        data_only, _ = insert_central_slices(slices, geometry, n_vox)
        return extract_central_slices(table, geometry), *inserted, data_only

    out = run_all(kernels)
    ref = run_all("torch")
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_insertion_adds_into_given_sums(kernels):
    """``out=`` accumulates in place (float64 sums of float32 slices too) what separate
    insertions would have returned."""
    d, pad, k = 16, 2, 2
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    g = torch.Generator().manual_seed(1)
    parts = [
        (
            torch.randn(5, k, d, d // 2 + 1, dtype=torch.complex64, generator=g),
            torch.rand(5, k, d, d // 2 + 1, generator=g),
            slice_geometry(random_rotations(5, seed=s), d, pad, kernels),
        )
        for s in range(2)
    ]
    data = torch.full((n_vox, 2 * k), 1.0, dtype=torch.float64)
    weight = torch.full((n_vox, k), 2.0, dtype=torch.float64)
    for slices, weights, geometry in parts:
        returned = insert_central_slices(slices, geometry, n_vox, weights, out=(data, weight))
        assert returned[0] is data and returned[1] is weight
    separate = [insert_central_slices(s, geo, n_vox, w) for s, w, geo in parts]
    expected_data = 1.0 + sum(part[0].double() for part in separate)
    expected_weight = 2.0 + sum(part[1].double() for part in separate)
    torch.testing.assert_close(data, expected_data, rtol=0, atol=1e-5)
    torch.testing.assert_close(weight, expected_weight, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("kernels", "k"), [("numba", 3), ("numba", 1), ("torch", 3)])
def test_insertion_with_class_factors_equals_the_expanded_slices(kernels, k):
    """One image per particle with per-class factors (the M-step's form) adds what the
    per-class slices ``f_ik X_i`` and weights ``g_ik W_i`` would, into float64 sums too."""
    d, pad, b = 16, 2, 7
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    g = torch.Generator().manual_seed(4)
    images = torch.randn(b, 1, d, d // 2 + 1, dtype=torch.complex64, generator=g)
    image_weights = torch.rand(b, 1, d, d // 2 + 1, generator=g)
    factors = (torch.rand(b, k, generator=g), torch.rand(b, k, generator=g))
    geometry = slice_geometry(random_rotations(b, seed=6), d, pad, kernels)
    expanded = insert_central_slices(
        images * factors[0][:, :, None, None],
        geometry,
        n_vox,
        image_weights * factors[1][:, :, None, None],
    )
    sums = tuple(torch.zeros(n_vox, c, dtype=torch.float64) for c in (2 * k, k))
    insert_central_slices(images, geometry, n_vox, image_weights, out=sums, factors=factors)
    data_only, _ = insert_central_slices(images, geometry, n_vox, factors=factors)
    for a, e in zip((*sums, data_only), (*expanded, expanded[0]), strict=True):
        torch.testing.assert_close(a.to(e.dtype), e, rtol=0, atol=1e-5 * float(e.abs().max()))
    if k > 1:
        with pytest.raises(ValueError, match="one image each"):
            expanded_images = images.expand(b, k, d, d // 2 + 1)
            insert_central_slices(expanded_images, geometry, n_vox, factors=factors)


def test_numba_insertion_does_not_depend_on_the_number_of_threads():
    """The radial bands fix the order of the additions to each voxel: bit-identical sums."""
    d, pad, k = 40, 2, 2
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    g = torch.Generator().manual_seed(3)
    slices = torch.randn(16, k, d, d // 2 + 1, dtype=torch.complex64, generator=g)
    weights = torch.rand(16, k, d, d // 2 + 1, generator=g)
    geometry = slice_geometry(random_rotations(16, seed=5), d, pad)
    threads = torch.get_num_threads()
    sums = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            sums.append(insert_central_slices(slices, geometry, n_vox, weights))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*sums, strict=True):
        assert torch.equal(a, b)


def test_numba_kernels_leave_autograd_to_torch():
    """Inputs that need a gradient take the torch code, so gradients flow (numba's do not)."""
    d, pad = 8, 2
    p = pad * d
    table = torch.randn(p * p * (p // 2 + 1), 2, dtype=torch.float64, requires_grad=True)
    geometry = slice_geometry(random_rotations(3, seed=4), d, pad, kernels="numba")
    extract_central_slices(table, geometry).abs().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_the_kernels_are_chosen_per_geometry_not_process_wide():
    """Geometries made with different kernels side by side each run their own; the default is
    numba; an unknown name is refused."""
    d, pad = 8, 2
    p = pad * d
    table = torch.randn(p * p * (p // 2 + 1), 4, dtype=torch.float64)
    rot = random_rotations(3, seed=7)
    by_torch = slice_geometry(rot, d, pad, "torch")
    by_numba = slice_geometry(rot, d, pad)
    assert by_torch.kernels.name == "torch" and by_numba.kernels is as_kernels("numba")
    assert by_torch.kernels is as_kernels(by_torch.kernels)
    # numba computes its neighbours on the fly: none made in advance for it on the CPU.
    assert "_neighbours" in vars(by_torch) and "_neighbours" not in vars(by_numba)
    torch.testing.assert_close(
        extract_central_slices(table, by_numba), extract_central_slices(table, by_torch)
    )
    assert set(KERNEL_CHOICES) == {"numba", "torch", "compiled"}
    with pytest.raises(ValueError, match="kernels must be one of numba, torch, compiled"):
        slice_geometry(rot, d, pad, "cuda")
