"""The E-step works on the shells it scores only (RELION's ``current_size``): the same
log-likelihoods as from the whole slices, at the cost of the shells in use."""

from __future__ import annotations

import pytest
import torch

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.estep import EStep
from cryotorch.engine.noise import NoiseModel
from cryotorch.physics.shells import shell_index_2d
from cryotorch.physics.slices import extract_central_slices, slice_geometry
from tests.physics_helpers import random_rotations

D, PAD, K, B = 24, 2, 3, 5


def _case(kernels: str, dtype: torch.dtype) -> tuple[torch.Tensor, ParticleBatch, NoiseModel]:
    gen = torch.Generator().manual_seed(3)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    p = PAD * D
    rot = random_rotations(B, seed=2).to(dtype)
    batch = ParticleBatch(
        rows=torch.arange(B).numpy(),
        spectra=torch.randn(B, D, D // 2 + 1, dtype=complex_dtype, generator=gen),
        ctf=torch.randn(B, D, D // 2 + 1, dtype=dtype, generator=gen),
        shift=torch.polar(
            torch.ones(B, D, D // 2 + 1, dtype=dtype),
            torch.randn(B, D, D // 2 + 1, dtype=dtype, generator=gen),
        ),
        rotations=rot,
        optics_group=torch.zeros(B, dtype=torch.long),
        geometry=slice_geometry(rot, D, PAD, kernels),
    )
    noise = NoiseModel(torch.rand(1, D // 2 + 1, dtype=dtype, generator=gen) + 0.5)
    volumes = torch.randn(p * p * (p // 2 + 1), 2 * K, dtype=dtype, generator=gen)
    return volumes, batch, noise


@pytest.mark.parametrize("kernels", ["numba", "torch"])
@pytest.mark.parametrize("max_shell", [1, 4, 7, 11, 12])
@pytest.mark.parametrize("optimal", [False, True])
def test_estep_on_the_shells_in_use_scores_as_the_whole_slices(kernels, max_shell, optimal):
    """Log-likelihoods and contrast from the whole slices (computed here by hand), to 1e-5;
    the residuals of the shells in use the same, and past them the image's own power."""
    volumes, batch, noise = _case(kernels, torch.float32)
    assert batch.geometry is not None
    whole = extract_central_slices(volumes, batch.geometry) * batch.shift[:, None]
    model = batch.ctf[:, None] * whole
    weights = noise.pixel_weights(batch.optics_group, max_shell)[:, None]
    if optimal:
        cross = (weights * (model.conj() * batch.spectra[:, None]).real).sum((-2, -1))
        power = (weights * model.abs() ** 2).sum((-2, -1))
        scale = (cross / power).clamp_min(0)
        model = model * scale[:, :, None, None]
    residual = (batch.spectra[:, None] - model).abs() ** 2
    expected = -0.5 * (residual * weights).sum((-2, -1))

    result = EStep(optimal_scale=optimal)(volumes, batch, noise, max_shell)
    torch.testing.assert_close(result.loglik, expected, rtol=1e-5, atol=1e-5)
    if optimal:
        torch.testing.assert_close(result.scale, scale, rtol=1e-5, atol=1e-6)
    used = slice(0, max_shell + 1)
    torch.testing.assert_close(
        result.residual_shells[..., used],
        noise.shell_sums(residual)[..., used],
        rtol=1e-5,
        atol=1e-4,
    )
    image_power = noise.shell_sums(batch.spectra.abs() ** 2)[:, None].expand(-1, K, -1)
    torch.testing.assert_close(
        result.residual_shells[..., max_shell + 1 :], image_power[..., max_shell + 1 :]
    )
    # The slices are the whole ones on the shells in use and zero past them.
    in_use = (shell_index_2d(D) <= max_shell).to(whole.real.dtype)
    torch.testing.assert_close(result.projections, whole * in_use, rtol=1e-5, atol=1e-6)


def test_the_shells_in_use_are_a_prefix_of_the_points():
    """The points of shells 0..m, and no more: what extraction then costs."""
    rot = random_rotations(4, seed=1)
    geometry = slice_geometry(rot, D, PAD, "torch")
    geometry.index  # noqa: B018 (neighbours computed: the part shares them)
    shells = geometry.k.norm(dim=-1).round()
    for m in (0, 3, 8):
        part = geometry.within_shell(m)
        assert len(part.pixels) == int((shells <= m).sum()) < len(geometry.pixels)
        assert (part.k.norm(dim=-1).round() <= m).all()
        torch.testing.assert_close(part.index, geometry.index[:, : len(part.pixels)])
    assert geometry.within_shell(D // 2) is geometry


def test_shell_sums_of_a_centred_crop_count_as_in_the_whole_box():
    """The sums of a crop's values per shell equal those of the whole box with the values
    outside the crop at 0 (the Hermitian multiplicity of the whole box's columns kept)."""
    noise = NoiseModel(torch.ones(1, D // 2 + 1, dtype=torch.float64))
    values = torch.rand(2, D, D // 2 + 1, dtype=torch.float64)
    for box in (4, 10, 22):
        start = D // 2 - box // 2
        outside = torch.zeros_like(values)
        outside[:, start : start + box, : box // 2 + 1] = 1
        crop = values[:, start : start + box, : box // 2 + 1]
        torch.testing.assert_close(noise.shell_sums(crop), noise.shell_sums(values * outside))


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_map_sums_to_a_shell_are_the_whole_sums_inside_it(kernels):
    """Sums inserted to shell m: the same as the whole insertion at the voxels no point past
    shell m reaches (|q| / pad < m - 0.4: the trilinear footprint is √3 padded voxels), and
    nothing past shell m + 1."""
    from cryotorch.engine.mstep import SufficientStatistics, accumulate_statistics
    from cryotorch.physics.fourier import frequency_grid_3d

    _, batch, noise = _case(kernels, torch.float64)
    gamma = torch.softmax(torch.randn(B, K, dtype=torch.float64), 1)
    p = PAD * D
    radius = (frequency_grid_3d(p).norm(dim=-1) / PAD).flatten()  # (n_voxels,) shells of d
    whole = SufficientStatistics.zeros(K, D, PAD, 1, "cpu", torch.float64)
    accumulate_statistics(whole, batch, None, gamma, noise)
    for m in (3, 7):
        part = SufficientStatistics.zeros(K, D, PAD, 1, "cpu", torch.float64)
        accumulate_statistics(part, batch, None, gamma, noise, max_shell=m)
        inside, outside = radius < m - 0.4, radius > m + 1
        torch.testing.assert_close(part.data[inside], whole.data[inside])
        torch.testing.assert_close(part.weight[inside], whole.weight[inside])
        assert (part.data[outside] == 0).all() and (part.weight[outside] == 0).all()
        assert (whole.weight[outside] != 0).any()


def test_an_iteration_inserts_the_next_esteps_shells_and_a_margin():
    """What the M-step of iteration t sums: the shells the E-step of t + 1 scores and
    INSERTION_MARGIN more; everything once that reaches the box's Nyquist."""
    from types import SimpleNamespace

    from cryotorch.engine.context import INSERTION_MARGIN, RunContext
    from cryotorch.engine.schedules import ResolutionSchedule

    schedule = ResolutionSchedule(20.0, 5.0, 20)
    run = SimpleNamespace(resolution=schedule, d=40, pixel_size=2.4)
    for iteration, expected in ((0, 4 + INSERTION_MARGIN), (9, 7 + INSERTION_MARGIN), (18, 19)):
        assert schedule.max_shell(iteration + 1, 40, 2.4) + INSERTION_MARGIN == expected
        state = SimpleNamespace(iteration=iteration)
        assert RunContext.insertion_shell(run, state) == expected  # type: ignore[arg-type]
    assert RunContext.insertion_shell(run, SimpleNamespace(iteration=19)) is None  # type: ignore[arg-type]
