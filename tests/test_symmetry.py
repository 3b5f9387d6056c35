"""Point-group symmetry (``model.symmetry``, issue 22): the groups' operators, the
symmetrisation of maps and of the M-step's sums, and classifications with it. The checks
against RELION's own programs are in ``tests/test_symmetry_relion.py``."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cryotorch.engine.mstep import MStep, SufficientStatistics, update_maps
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.regularisers import HalfSetFSCFilter, TauSquaredPrior
from cryotorch.engine.settings import ClassificationSettings, ModelSettings, OptimSettings
from cryotorch.engine.state import check_resumable
from cryotorch.errors import InputError
from cryotorch.physics.fourier import frequency_grid_3d, rfft_2d
from cryotorch.physics.fsc import fourier_shell_correlation
from cryotorch.physics.masks import soft_sphere
from cryotorch.physics.projector import project, reconstruct_from_sums
from cryotorch.physics.slices import (
    insert_for_reconstruction,
    slice_geometry,
    sum_friedel_mates_on_x0_plane,
)
from cryotorch.physics.symmetrise import exact_cosets, symmetrise_maps, symmetrise_sums
from cryotorch.physics.symmetry import canonical_symmetry, symmetry_operators
from cryotorch.simulate.particles import SimulationSettings, simulate_particles
from tests.physics_helpers import DEVICES, blob_volume, random_rotations
from tests.run_helpers import run_classify

GROUPS = [
    ("C1", 1), ("C2", 2), ("C4", 4), ("C7", 7), ("D1", 2), ("D2", 4), ("D3", 6), ("D6", 12),
    ("T", 12), ("O", 24), ("I", 60), ("I1", 60), ("I3", 60), ("I4", 60),
]  # fmt: skip
PHI = (1 + math.sqrt(5)) / 2


def blobs(d: int, centres: list[tuple[float, float, float]], sigma: float = 2.0) -> torch.Tensor:
    """``(d, d, d)`` float64: Gaussian blobs at ``(x, y, z)`` pixels from the centre."""
    return sum((1 + 0.3 * i) * blob_volume(d, c, sigma) for i, c in enumerate(centres))


def symmetric_blobs(
    d: int, name: str, centres: list[tuple[float, float, float]], sigma: float = 1.5
) -> torch.Tensor:
    """Blobs at every image ``R c`` of each centre: a map with the symmetry of ``name``."""
    ops = symmetry_operators(name)
    points = [r @ torch.tensor(c, dtype=torch.float64) for c in centres for r in ops]
    return sum(blob_volume(d, tuple(q.tolist()), sigma) for q in points)


def quarter_turn(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(..., d, d, d)`` turned by 90° about z through the centre voxel ``d // 2``
    (exact on the grid; ``rot90`` turns about ``(d - 1) / 2``, the roll moves that to ``d //
    2``; the row it wraps is outside the solvent mask)."""
    return torch.roll(torch.rot90(maps, 1, dims=(-2, -1)), 1, dims=-2)


def rotated(volume: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``V(R p)`` (trilinear), from the average of ``V`` over ``{I, R}``."""
    pair = torch.stack([torch.eye(3, dtype=r.dtype), r])
    return 2 * symmetrise_maps(volume[None], pair)[0] - volume


# -- the groups --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n"), GROUPS)
def test_the_operators_form_a_group_of_rotations(name: str, n: int):
    ops = symmetry_operators(name)
    assert ops.shape == (n, 3, 3)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(ops[0], eye, rtol=0, atol=0)
    torch.testing.assert_close(ops @ ops.mT, eye.expand(n, 3, 3), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(ops), torch.ones(n, dtype=ops.dtype))
    apart = (ops[:, None] - ops[None]).abs().flatten(2).amax(2) + 10 * torch.eye(n)
    assert apart.min() > 0.1  # all different
    products = (ops[:, None] @ ops[None]).reshape(-1, 1, 3, 3)
    nearest = (products - ops[None]).abs().flatten(2).amax(2).amin(1)
    assert nearest.max() < 1e-9  # closed under products


def has_axis(ops: torch.Tensor, axis: tuple[float, float, float], order: int) -> bool:
    """Whether ``ops`` holds the rotation by ``2π / order`` about ``axis`` (either sense)."""
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    fixes = (ops @ a - a).norm(dim=-1) < 1e-9
    trace = ops.diagonal(dim1=-2, dim2=-1).sum(-1)  # 1 + 2 cos(angle)
    return bool((fixes & ((trace - 1 - 2 * math.cos(2 * math.pi / order)).abs() < 1e-9)).any())


@pytest.mark.parametrize(
    ("name", "axes"),
    [
        ("C4", [((0, 0, 1), 4)]),
        ("C7", [((0, 0, 1), 7)]),
        ("D2", [((0, 0, 1), 2), ((1, 0, 0), 2), ((0, 1, 0), 2)]),
        ("D5", [((0, 0, 1), 5), ((1, 0, 0), 2)]),
        ("T", [((0, 0, 1), 3), ((0, math.sqrt(2), 1), 2)]),
        ("O", [((1, 0, 0), 4), ((0, 1, 0), 4), ((0, 0, 1), 4), ((1, 1, 1), 3)]),
        ("I", [((1, 0, 0), 2), ((0, 1, 0), 2), ((0, 0, 1), 2), ((0, PHI, 1), 5)]),
        ("I1", [((1, 0, 0), 2), ((0, 1, 0), 2), ((0, 0, 1), 2), ((0, 1, PHI), 5)]),
        ("I3", [((0, 0, 1), 5), ((2, 0, -1), 5), ((0, 1, 0), 2)]),
        ("I4", [((0, 0, 1), 5), ((2, 0, 1), 5), ((0, 1, 0), 2)]),
    ],
)
def test_the_axes_are_relions(name: str, axes: list):
    ops = symmetry_operators(name)
    for axis, order in axes:
        assert has_axis(ops, axis, order), (name, axis, order)
    if name in ("C4", "C7"):
        assert not has_axis(ops, (1, 0, 0), 2)  # Cn has no 2-fold across z
    if name == "I":  # I2, not I1: no 5-fold along (0, 1, φ)
        assert not has_axis(ops, (0, 1, PHI), 5)


def test_names_are_read_as_relion_reads_them():
    assert canonical_symmetry("c4") == "C4"
    assert canonical_symmetry("I") == canonical_symmetry("i2") == "I2"
    torch.testing.assert_close(symmetry_operators("I"), symmetry_operators("I2"))
    assert ModelSettings(symmetry="d2").symmetry == "d2"  # accepted as given


@pytest.mark.parametrize("name", ["C0", "D0", "C", "X", "C4v", "C2h", "D2h", "S4", "I5", "Oh", ""])
def test_other_names_are_refused_naming_the_key(name: str):
    with pytest.raises(
        ValueError, match=rf"^model\.symmetry must be C<n> or D<n> .* got '{name}'$"
    ):
        ModelSettings(symmetry=name)


def test_gradient_training_with_a_point_group_is_refused():
    with pytest.raises(ValueError, match=r"model\.symmetry is imposed in the EM M-step"):
        ClassificationSettings(model=ModelSettings(symmetry="C4"), optim=OptimSettings("gradient"))
    ClassificationSettings(model=ModelSettings(symmetry="c1"), optim=OptimSettings("gradient"))


def test_a_checkpoint_from_before_model_symmetry_resumes_as_c1():
    settings = ClassificationSettings()
    state = {"n_particles": 10, "box": 8, "settings": {"model": {}, "optim": {}}}
    from cryotorch.engine.settings import settings_dict

    state["settings"] = settings_dict(settings)
    del state["settings"]["model"]["symmetry"]
    check_resumable("run/checkpoint.pt", state, settings, 10, 8)  # no error
    with pytest.raises(InputError, match=r"model\.symmetry was 'C1', now 'C4'"):
        check_resumable(
            "run/checkpoint.pt", state, ClassificationSettings(ModelSettings(symmetry="C4")), 10, 8
        )


# -- symmetrising maps and sums ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["C4", "D3", "T", "I"])
def test_a_symmetrised_map_is_invariant_under_every_operator(name: str):
    d, centres = 24, [(4.0, 1.0, -2.0), (-2.0, 5.0, 3.0), (1.0, -3.0, 5.0)]
    volume = sum(blob_volume(d, c, 2.0) for c in centres)
    ops = symmetry_operators(name)
    symmetric = symmetrise_maps(volume[None], ops)[0]
    # The tolerance: how much trilinear rotation changes a map built symmetric (its blobs at
    # every R c; measured 0 for C4, 2-5 % for D3, T, I).
    exact = symmetric_blobs(d, name, centres, sigma=2.0)
    for r in ops[1:]:
        change = (rotated(symmetric, r) - symmetric).norm() / symmetric.norm()
        tolerance = (rotated(exact, r) - exact).norm() / exact.norm()
        assert change <= 1.2 * tolerance + 1e-9, (name, change, tolerance)
    # ... while the map it came from changes by more than its norm.
    assert max((rotated(volume, r) - volume).norm() / volume.norm() for r in ops[1:]) > 0.5


def full_spectrum(half: torch.Tensor) -> torch.Tensor:
    """``(c, p, p, p)`` complex, index ``[kz, ky, kx] + p // 2``, of Hermitian half spectra
    ``(c, p, p, p // 2 + 1)`` (x = 0 plane complete): ``F(-k) = conj F(k)``."""
    c, p = half.shape[0], half.shape[-2]
    full = half.new_zeros(c, p, p, p)
    full[..., p // 2 :] = half[..., : p // 2]
    mirror = torch.roll(half.flip((-3, -2)), shifts=(1, 1), dims=(-3, -2)).conj()  # (z, y) -> -
    full[..., 1 : p // 2] = mirror[..., 1 : p // 2].flip(-1)  # kx = -(p // 2 - 1) .. -1
    full[..., 0] = mirror[..., p // 2]  # kx = -p // 2 (the +p // 2 of the half spectrum)
    return full


def reference_symmetrised(data: torch.Tensor, weight: torch.Tensor, p: int, ops: torch.Tensor):
    """``Σ_R H(R k)`` read by ``grid_sample`` on the whole spectrum, every operator
    interpolated (the obviously correct version): ``(c, p, p, p // 2 + 1)`` complex."""
    k = weight.shape[1]
    half = torch.complex(data[:, 0::2], data[:, 1::2]).T.reshape(k, p, p, p // 2 + 1)
    half = torch.cat([half, weight.T.reshape(k, p, p, p // 2 + 1).to(half.dtype)])
    full = full_spectrum(sum_friedel_mates_on_x0_plane(half))
    channels = torch.view_as_real(full).permute(0, 4, 1, 2, 3).reshape(1, -1, p, p, p)
    k_grid = frequency_grid_3d(p).double().reshape(-1, 3)
    total = torch.zeros(channels.shape[1], len(k_grid), dtype=torch.float64)
    for r in ops:
        index = (k_grid @ r.T + p // 2) * 2 / (p - 1) - 1
        total += F.grid_sample(channels, index.reshape(1, 1, 1, -1, 3), align_corners=True).reshape(
            channels.shape[1], -1
        )
    total = total.reshape(-1, 2, p, p, p // 2 + 1)
    return torch.complex(total[:, 0], total[:, 1])


@pytest.mark.parametrize("name", ["C2", "C4", "D2", "D3", "T", "O", "I", "I3"])
def test_symmetrised_sums_are_the_sums_over_the_group(name: str):
    """The exact reads (signed permutations), the cosets, the Friedel mates and the x = 0 plane's
    halving together give what reading every operator from the whole spectrum gives."""
    d, pad, k = 12, 2, 2
    p = pad * d
    g = torch.Generator().manual_seed(3)
    n_vox = p * p * (p // 2 + 1)
    radius = frequency_grid_3d(p).double().norm(dim=-1).reshape(-1, 1)
    inside = radius <= p / 2  # the sums hold data within p / 2 + √3 only
    data = torch.randn(n_vox, 2 * k, generator=g, dtype=torch.float64) * inside
    weight = torch.rand(n_vox, k, generator=g, dtype=torch.float64) * inside
    ops = symmetry_operators(name)
    sym_data, sym_weight = symmetrise_sums(data, weight, d, pad, ops)
    assert sym_data.shape == data.shape and sym_weight.shape == weight.shape
    ours = torch.complex(sym_data[:, 0::2], sym_data[:, 1::2]).T.reshape(k, p, p, p // 2 + 1)
    ours = sum_friedel_mates_on_x0_plane(ours)
    weights = sum_friedel_mates_on_x0_plane(sym_weight.T.reshape(k, p, p, p // 2 + 1))
    expected = reference_symmetrised(data, weight, p, ops)
    away_from_edges = (radius <= p / 2 - 2).reshape(p, p, p // 2 + 1)
    torch.testing.assert_close(ours[:, away_from_edges], expected[:k, away_from_edges])
    torch.testing.assert_close(weights[:, away_from_edges], expected[k:, away_from_edges].real)
    torch.testing.assert_close(
        expected[k:, away_from_edges].imag, torch.zeros_like(weights[:, away_from_edges])
    )
    exact, cosets = exact_cosets(ops)
    assert len(exact) * len(cosets) == len(ops)


@pytest.mark.parametrize(
    ("name", "n_exact"), [("C4", 4), ("D2", 4), ("D3", 2), ("T", 1), ("O", 24), ("I", 12)]
)
def test_the_exact_subgroup(name: str, n_exact: int):
    exact, cosets = exact_cosets(symmetry_operators(name))
    assert len(exact) == n_exact and len(cosets) == len(symmetry_operators(name)) // n_exact
    assert ((exact.abs() < 1e-9) | ((exact.abs() - 1).abs() < 1e-9)).all()


def projected_sums(volume: torch.Tensor, rotations: torch.Tensor, d: int, pad: int, ops=None):
    """Data and weight sums of the projections of ``volume`` at ``rotations``; with ``ops``,
    each projection inserted at every pose ``A Rᵀ`` too (what the symmetry says it also is)."""
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    spectra = rfft_2d(project(volume[None], rotations, pad, kernels="torch")[:, 0])
    data = torch.zeros(n_vox, 2, dtype=torch.float64)
    weight = torch.zeros(n_vox, 1, dtype=torch.float64)
    poses = [rotations] if ops is None else [rotations @ r.T for r in ops]
    for a in poses:
        geometry = slice_geometry(a, d, pad, "torch")
        ones = torch.ones_like(spectra.real)[:, None]
        insert_for_reconstruction(spectra[:, None], geometry, n_vox, ones, out=(data, weight))
    return data, weight


@pytest.mark.parametrize("name", ["C4", "T"])
def test_symmetrised_sums_are_those_of_inserting_at_every_related_pose(name: str):
    d, pad = 24, 2
    volume = blobs(d, [(4, 1, -2), (-2, 5, 3), (1, -3, 5)], sigma=1.5)
    rotations = random_rotations(200, seed=4, dtype=torch.float64)
    ops = symmetry_operators(name)
    data, weight = symmetrise_sums(*projected_sums(volume, rotations, d, pad), d, pad, ops)
    everywhere = projected_sums(volume, rotations, d, pad, ops)
    maps = [reconstruct_from_sums(*sums, d, pad, 1e-3 * sums[1].mean())[0] for sums in
            ((data, weight), everywhere)]  # fmt: skip
    signal = 3 * d // 8 + 1  # shells with signal: beyond, the blobs' power is < 1e-4 of it
    fsc = fourier_shell_correlation(*maps)[:signal]
    assert fsc.min() > 0.97, fsc  # measured: C4 > 0.9999, T > 0.995 (two interpolations)
    # Summed, not averaged (the 1 % less: the spill beyond p / 2 is dropped).
    assert weight.sum() == pytest.approx(everywhere[1].sum(), rel=0.02)


@pytest.mark.parametrize("device", DEVICES)
def test_the_symmetrisation_runs_on_the_sums_device_and_dtype(device: str):
    d, pad, k = 8, 2, 2
    n_vox = (pad * d) ** 2 * (pad * d // 2 + 1)
    data = torch.randn(n_vox, 2 * k, device=device)
    weight = torch.rand(n_vox, k, device=device)
    ops = symmetry_operators("I")  # float64 on the CPU: moved and cast where used
    sym_data, sym_weight = symmetrise_sums(data, weight, d, pad, ops)
    assert sym_data.device == data.device and sym_data.dtype == torch.float32
    cpu = symmetrise_sums(data.cpu(), weight.cpu(), d, pad, ops)
    torch.testing.assert_close(sym_data.cpu(), cpu[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sym_weight.cpu(), cpu[1], rtol=1e-4, atol=1e-4)
    maps = symmetrise_maps(torch.rand(2, d, d, d, device=device), ops)
    assert maps.device == data.device


# -- the M-step ---------------------------------------------------------------------------------


def two_class_stats(d: int, pad: int, halves: bool = False) -> SufficientStatistics:
    """Statistics of two (asymmetric) blob maps' projections at 150 poses each."""
    stats = SufficientStatistics.zeros(4 if halves else 2, d, pad, 1, "cpu", torch.float64)
    for j, volume in enumerate([blobs(d, [(3, 1, -2), (-2, 4, 2)]), blobs(d, [(-3, 0, 3)])]):
        for h in range(2 if halves else 1):
            rotations = random_rotations(150, seed=10 * j + h, dtype=torch.float64)
            data, weight = projected_sums(volume, rotations, d, pad)
            c = j + 2 * h
            stats.data[:, 2 * c : 2 * c + 2] = data
            stats.weight[:, c : c + 1] = weight
    stats.class_weight[:] = 150
    return stats


def test_c1_leaves_the_m_step_as_it_was():
    d, pad = 16, 2
    stats = two_class_stats(d, pad)
    mask = soft_sphere(d, d / 2 - 2, 2.0).double()
    noise = NoiseModel.flat(1, d, torch.float64, "cpu")
    plain = MStep(TauSquaredPrior(), mask, 2, pad, 2.0)
    c1 = MStep(TauSquaredPrior(), mask, 2, pad, 2.0, symmetry="c1")
    assert c1.symmetrised(stats) is stats  # no copy, no work
    assert list(c1.state_dict()) == list(plain.state_dict()) == ["solvent_mask"]
    expected = update_maps(stats, d, pad, 4.0, mask)
    for module in (plain, c1):
        torch.testing.assert_close(module(stats, noise).maps, expected, rtol=0, atol=0)


@pytest.mark.parametrize("regulariser", [TauSquaredPrior(), HalfSetFSCFilter()])
def test_the_m_step_with_c4_gives_symmetric_maps_and_leaves_the_sums_as_they_were(regulariser):
    d, pad = 16, 2
    stats = two_class_stats(d, pad, halves=regulariser.half_sets)
    before = stats.clone()
    mask = soft_sphere(d, d / 2 - 2, 2.0).double()
    noise = NoiseModel.flat(1, d, torch.float64, "cpu")
    maps = MStep(regulariser, mask, 2, pad, 2.0, symmetry="C4")(stats, noise).maps
    for mine, theirs in zip(stats.tensors(), before.tensors(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)  # online EM's running sums
    # Exact but for box d's Nyquist planes (-d/2 without +d/2), which the FSC filter's rfft
    # of the maps keeps: measured 0 for tau2, 3e-6 for fsc.
    assert ((quarter_turn(maps) - maps).norm() / maps.norm()) < 1e-5
    plain = MStep(regulariser, mask, 2, pad, 2.0)(stats, noise).maps
    assert ((quarter_turn(plain) - plain).norm() / plain.norm()) > 0.3


# -- classification -----------------------------------------------------------------------------


def test_a_c4_classification_classifies_at_least_as_well_and_gives_c4_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    """Two C4-symmetric classes that differ little: with model.symmetry=C4 the classes come
    apart (measured 96 % against 60 % for C1, SNR 0.2) and the class maps have the symmetry
    (measured |turned - maps| / |maps| 0.005 against 0.42)."""
    d = 24
    a = symmetric_blobs(d, "C4", [(4.0, 1.0, -2.0), (-1.0, 3.0, 3.0)])
    b = a + 0.6 * symmetric_blobs(d, "C4", [(1.0, -5.0, 1.0)])
    star = simulate_particles(
        torch.stack([a, b]).float().numpy(),
        3.0,
        tmp_path / "sim",
        SimulationSettings(n_particles=600, snr=0.2, seed=4),
    )
    fast = [
        "logger=none", "logger.quiet=true", "model.target_resolution=8",
        "model.initial_resolution=18", "model.resolution_reach_at=3", "optim.online_epochs=1",
        "optim.batch_per_class=100", "optim.max_iterations=8", "posterior.similarity.anneal_end=3",
    ]  # fmt: skip
    accuracy, asymmetry = {}, {}
    for name in ("C1", "C4"):
        out = tmp_path / name
        accuracy[name] = run_classify(star, out, *fast, f"model.symmetry={name}")["accuracy"]
        said = capsys.readouterr().out
        assert (", symmetry C4, cpu" in said) == (name == "C4"), said  # the run says so
        maps = torch.from_numpy(
            np.stack([mrcfile.read(out / f"class_{k:03d}.mrc") for k in (1, 2)])
        ).double()
        asymmetry[name] = float((quarter_turn(maps) - maps).norm() / maps.norm())
    assert accuracy["C4"] >= max(accuracy["C1"], 0.8), accuracy
    assert asymmetry["C4"] < 0.03 and asymmetry["C1"] > 0.1, asymmetry
