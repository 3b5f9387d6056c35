"""Point-group symmetry applied to the reconstruction's sums, and to maps.

:func:`symmetrise_sums` is what the M-step does, as RELION's backprojector does before it
solves for the map: the data and weight sums of
:func:`~cryotorch.physics.slices.insert_for_reconstruction` (the padded half spectrum) become
at each voxel ``k`` the sums over the group of their values at ``R k``, read between voxels
trilinearly, once per M-step. That is what inserting every particle at each of its ``n_ops``
symmetry-related poses would give, up to the interpolation, for ``n_ops`` readings of the grid
instead of ``n_ops`` times the insertions. The sums are added, not averaged: a particle shows
``n_ops`` copies of the asymmetric unit, so the data weigh ``n_ops`` times more against the
prior, as they would inserted at every pose.

The operators that only permute and negate axes (``R`` with entries 0 and ±1: the 2-folds
along x, y and z of D2 and I1/I2, the 4-folds along z, all of O) map the grid onto itself; they
form a subgroup E and are read exactly, without interpolation, in a chain of small subgroups
(each sum over the next is a few reads of the sum over the last: O's 24 in 5 reads). Then one
operator ``a`` of each coset ``E a`` is read trilinearly: since trilinear interpolation
commutes with those axis permutations, ``Σ_a (Σ_e H(e ·))(a k)`` is ``Σ_R H(R k)``, with
``n_ops / |E| - 1`` interpolations instead of ``n_ops - 1``: none for C2, C4, D2, D4 and O, 4
for I1 and I2 (E is their tetrahedral subgroup: the 2-folds along the axes and the 3-folds
along the cube's diagonals), 29 for I3 and I4, 11 for T (whose 2-folds are off the axes).
:func:`symmetrise_sums` holds about four copies of the sums at once.

:func:`symmetrise_maps` averages real-space maps over the group (for checks, and maps from
elsewhere). Operators ``(n_ops, 3, 3)`` come from
:func:`cryotorch.physics.symmetry.symmetry_operators`; both functions are torch code, on any
device, in the sums' dtype.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F

from cryotorch.physics.fourier import frequency_grid_3d

__all__ = ["exact_cosets", "symmetrise_maps", "symmetrise_sums"]


def symmetrise_maps(maps: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """Real maps ``(k, d, d, d)`` averaged over the group, ``(1 / n_ops) Σ_R V(R p)``, ``V``
    read between voxels trilinearly (0 outside the box): ``(k, d, d, d)``."""
    d = maps.shape[-1]
    steps = torch.arange(d, device=maps.device, dtype=maps.dtype) - d // 2
    gz, gy, gx = torch.meshgrid(steps, steps, steps, indexing="ij")
    points = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)  # (d³, 3) as (x, y, z)
    shape = torch.full((3,), d, device=maps.device)
    total = maps.clone()
    for r in operators[1:].to(maps):  # the first is the identity
        total += _read(maps, points @ r.T + d // 2, shape).view_as(maps)
    return total / operators.shape[0]


def symmetrise_sums(
    data: torch.Tensor, weight: torch.Tensor, d: int, pad: int, operators: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums ``data (n_voxels, 2k)`` and ``weight (n_voxels, k)`` (interleaved, padded half
    spectra of box ``p = pad d``) summed over the group: new tensors of the same shapes.

    First each ``x = 0`` plane gets its Friedel mates (the sums then stand for the whole
    Hermitian spectrum, ``H(-k) = conj H(k)``); then each voxel ``k`` within ``p / 2`` Fourier
    pixels of the centre (box ``d``'s Nyquist, RELION's ``r_max``) gets ``Σ_R H(R k)``, read at
    ``-R k`` and conjugated where its x is negative (see the module for the order); last the
    ``x = 0`` plane is halved, so that
    :func:`~cryotorch.physics.projector.reconstruct_from_sums`, which adds the mates again,
    finds the symmetrised sums. Beyond ``p / 2`` the sums are set to 0: only the trilinear
    spill of the outermost slices lies there, and the grid lacks the planes at ``+p / 2`` that
    a rotation maps some of it to (kept, they made the maps of C4 asymmetric by 7e-4). The
    identity's term is the sums themselves, exactly.
    """
    p, k = pad * d, weight.shape[1]
    px = p // 2 + 1
    conjugate = torch.ones(2 * k, dtype=data.dtype, device=data.device)
    conjugate[1::2] = -1  # the imaginary parts of the data change sign, the weights none
    sums = [_with_friedel_mates(data, p, conjugate), _with_friedel_mates(weight, p, 1.0)]
    freq = frequency_grid_3d(p, data.device).to(data.dtype).reshape(-1, 3)  # (x, y, z)
    radius = freq.norm(dim=-1)
    # Slices reach p / 2, their trilinear neighbours √3 further: beyond, the sums are 0.
    reach = torch.nonzero(radius <= p / 2 + math.sqrt(3)).flatten()
    kept = radius[reach] <= p / 2
    points = freq[reach]  # (m, 3)
    _, cosets, chain = _plan(operators)
    integers = points.round().long()
    partial = [s[reach] for s in sums]  # Σ over E of H(e k), E one small subgroup at a time
    for i, step in enumerate(chain):
        if i:  # the sums over the last subgroup, which the next one reads
            for table, values in zip(sums, partial, strict=True):
                table[reach] = values
        partial = [values.clone() for values in partial]
        for e in step:
            index, valid, flip = _exact_reads(integers, e, p)
            for table, values, sign in zip(sums, partial, (conjugate, None), strict=True):
                read = table.index_select(0, index) * valid[:, None]
                if sign is not None:  # conjugated where read at -q
                    read[:, 1::2] *= 1 - 2 * flip[:, None].to(read.dtype)
                values += read
    totals = [values[kept] for values in partial]
    if len(cosets) > 1:
        grids = data.new_zeros(3 * k, p * p * px)  # channel-first, as grid_sample reads them
        grids[: 2 * k, reach] = partial[0].T
        grids[2 * k :, reach] = partial[1].T
        shape = torch.tensor([px, p, p], device=data.device)
        for a in cosets[1:].to(data):
            read = _read_folded(grids.view(-1, p, p, px), a, points[kept], shape, k)
            totals[0] += read[: 2 * k].T
            totals[1] += read[2 * k :].T
    out = []
    for table, total in zip(sums, totals, strict=True):
        table.zero_()
        table[reach[kept]] = total
        table.view(p, p, px, -1)[:, :, 0] *= 0.5  # reconstruct_from_sums adds the mates again
        out.append(table)
    return out[0], out[1]


def _with_friedel_mates(
    table: torch.Tensor, p: int, conjugate: torch.Tensor | float
) -> torch.Tensor:
    """A copy of the half spectra ``table (p p (p // 2 + 1), c)`` (voxel-major) with each
    ``x = 0`` entry's mirror ``(-y, -z)`` added, times ``conjugate`` per channel (``(c,)``:
    -1 on the imaginary parts)."""
    out = table.clone()
    plane = table.view(p, p, p // 2 + 1, -1)[:, :, 0]
    mirror = torch.roll(plane.flip((0, 1)), shifts=(1, 1), dims=(0, 1))  # index i -> p - i
    out.view(p, p, p // 2 + 1, -1)[:, :, 0] = plane + mirror * conjugate
    return out


def exact_cosets(operators: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exact (e, 3, 3)``: the operators that only permute and negate axes (a subgroup,
    identity first) and ``cosets (a, 3, 3)``: one operator of each right coset ``E a`` of the
    group (the identity first), ``e · a = n_ops``."""
    signed_permutation = ((operators.abs() - 1).abs() < 1e-9) | (operators.abs() < 1e-9)
    exact = operators[signed_permutation.flatten(1).all(1)]
    return exact, _right_cosets(exact, operators)


def _right_cosets(subgroup: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """One element ``a`` of each right coset ``H a`` of ``subgroup`` H in ``group``
    (``(n, 3, 3)`` each, the identity first in both): the identity first."""
    covered = torch.zeros(len(group), dtype=torch.bool)
    representatives = []
    for i, a in enumerate(group):
        if not covered[i]:
            representatives.append(a)
            covered |= _members(subgroup @ a, group)
    return torch.stack(representatives)


def _members(elements: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(len(group),)`` bool: which elements of ``group`` are among ``elements``."""
    return (elements[:, None] - group[None]).abs().flatten(2).amax(2).lt(1e-6).any(0)


def _subgroup_chain(exact: torch.Tensor) -> list[torch.Tensor]:
    """Subgroups ``{I} = E_0 ⊂ E_1 ⊂ ... ⊂ E_n = exact``, each the smallest one that the last
    and one more element generate, as the representatives of ``E_i`` in ``E_{i + 1}`` but the
    identity (``(r_i, 3, 3)`` each): ``Σ_{E_{i+1}} H(e k) = Σ_a (Σ_{E_i} H(e ·))(a k)``, so
    that E's sum takes ``Σ (r_i)`` reads, not ``|E| - 1`` (C4 and D2: 2 instead of 3, the 12
    of T in I2: 4 instead of 11, O: 5 instead of 23)."""
    members, steps = exact[:1], []
    while len(members) < len(exact):
        outside = exact[~_members(members, exact)]
        subgroups = [_closure(torch.cat([members, g[None]])) for g in outside]
        smallest = min(subgroups, key=len)
        steps.append(_right_cosets(members, smallest)[1:])
        members = smallest
    return steps


def _closure(elements: torch.Tensor) -> torch.Tensor:
    """The group that ``elements (n, 3, 3)`` (the identity first) generate, in first-found
    order."""
    group = list(elements)
    seen = {_key(g) for g in group}
    while True:
        stacked = torch.stack(group)
        grown = False
        for product in (stacked[:, None] @ stacked[None]).reshape(-1, 3, 3):
            if _key(product) not in seen:
                seen.add(_key(product))
                group.append(product)
                grown = True
        if not grown:
            return torch.stack(group)


def _key(r: torch.Tensor) -> tuple[float, ...]:
    return tuple(round(v, 6) + 0.0 for v in r.flatten().tolist())  # + 0.0: -0.0 is 0.0


@cache
def _plan_of(key: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    operators = torch.tensor(key, dtype=torch.float64).reshape(-1, 3, 3)
    exact, cosets = exact_cosets(operators)
    return exact, cosets, _subgroup_chain(exact)


def _plan(operators: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """:func:`exact_cosets` and :func:`_subgroup_chain` of ``operators``, made once per group."""
    return _plan_of(
        tuple(round(v, 9) for v in operators.detach().cpu().double().flatten().tolist())
    )


def _exact_reads(
    points: torch.Tensor, e: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the half spectra of box ``p`` hold ``q = e k`` for the integer frequencies
    ``points (m, 3)``, ``e`` a signed permutation: flat voxel ``index (m,)``, ``valid (m,)``
    (False outside the grid, index 0 there) and ``flip (m,)``: read at ``-q`` (conjugate)."""
    axis = e.abs().argmax(1)  # q_i = sign_i k_axis_i
    sign = e[torch.arange(3), axis].round().long().to(points.device)
    q = points[:, axis.to(points.device)] * sign
    # Read at -q where qx < 0, and on the x = 0 plane where y or z is +p / 2 (the grid holds
    # -p / 2 only): then every frequency within p / 2 is read, the sums over E exact there.
    at_edge = (q[:, 1] == p // 2) | (q[:, 2] == p // 2)
    flip = (q[:, 0] < 0) | ((q[:, 0] == 0) & at_edge)
    q = torch.where(flip[:, None], -q, q)
    px = p // 2 + 1
    x, y, z = q[:, 0], q[:, 1] + p // 2, q[:, 2] + p // 2
    valid = (x < px) & (y >= 0) & (y < p) & (z >= 0) & (z < p)  # x >= 0: folded
    return torch.where(valid, (z * p + y) * px + x, 0), valid, flip


def _read_folded(
    grids: torch.Tensor, a: torch.Tensor, points: torch.Tensor, shape: torch.Tensor, k: int
) -> torch.Tensor:
    """``(c, m)``: the half spectra ``grids (c, p, p, px)`` (re, im of ``k`` classes, then
    ``k`` weights) read trilinearly at the frequencies ``q = a points`` (``points (m, 3)``),
    at ``-q`` and conjugated where ``qx < 0``; 0 outside the grid."""
    # grid_sample's coordinates (align_corners: index i -> 2i / (n - 1) - 1), the scale folded
    # into the matrix: u = a points · scale, then ±u (the sign of qx) + the centre's position.
    scale = 2 / (shape.to(points.dtype) - 1)
    u = points @ (a.T * scale)
    s = 1 - 2 * (u[:, :1] < 0).to(u.dtype)  # (m, 1): -1 where read at -q
    offset = points.new_tensor([0.0, float(shape[1] // 2), float(shape[2] // 2)]) * scale - 1
    values = _sample(grids, torch.addcmul(offset, u, s))
    values[1 : 2 * k : 2] *= s.T  # conjugated: the imaginary parts negated
    return values


def _read(volumes: torch.Tensor, index: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """``(c, m)``: ``volumes (c, nz, ny, nx)`` read trilinearly at the grid positions ``index
    (m, 3)``, ``(x, y, z)`` from voxel 0; ``shape = (nx, ny, nz)``; 0 outside the grid."""
    return _sample(volumes, index * (2 / (shape.to(index.dtype) - 1)) - 1)


def _sample(volumes: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
    """``(c, m)``: ``volumes (c, nz, ny, nx)`` at grid_sample's coordinates ``(m, 3)``."""
    sampled = F.grid_sample(
        volumes[None],
        normalised.reshape(1, 1, 1, -1, 3),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # (1, c, 1, 1, m)
    return sampled.reshape(volumes.shape[0], -1)
