"""Where central slices fall in the padded Fourier volumes, and the Friedel bookkeeping.

A particle's 2D frequency ``k = (kx, ky)`` (box ``d``, Fourier pixels) samples the 3D transform
at ``q = pad · Aᵀ (kx, ky, 0)`` (RELION's matrix ``A``, see :mod:`cryotorch.conventions`). Only
frequencies with ``|k| <= d / 2`` are used (RELION's ``r_max``). Points with ``qx < 0`` are read
at ``-q`` and conjugated (Friedel symmetry of the rfft half); values between voxels are
trilinearly interpolated from their 8 neighbours.

The K Fourier volumes are stored *interleaved*, ``(n_voxels, 2K)`` real (real and imaginary
parts of every class side by side), so that one gather of a voxel serves all K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from cryotorch.physics.fourier import frequency_grid_2d

if TYPE_CHECKING:
    from cryotorch.physics.slices.kernels import Kernels

__all__ = [
    "SliceGeometry",
    "deinterleave_classes",
    "half_weight_x0_column",
    "interleave_classes",
    "sum_friedel_mates_on_x0_plane",
    "trilinear_neighbours",
    "used_frequencies",
]


def interleave_classes(volumes_ft: torch.Tensor) -> torch.Tensor:
    """``(k, p, p, p // 2 + 1)`` complex -> ``(p * p * (p // 2 + 1), 2k)`` real, voxel-major."""
    k = volumes_ft.shape[0]
    return torch.view_as_real(volumes_ft).permute(1, 2, 3, 0, 4).reshape(-1, 2 * k).contiguous()


def deinterleave_classes(table: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`interleave_classes`: ``(n_voxels, 2k)`` -> ``(k, p, p, p // 2 + 1)``."""
    k = table.shape[1] // 2
    vol = table.reshape(p, p, p // 2 + 1, k, 2).permute(3, 0, 1, 2, 4).contiguous()
    return torch.view_as_complex(vol)


@dataclass(frozen=True)
class SliceGeometry:
    """Where the frequencies of ``b`` slices fall in the ``pad``-times padded volume grid, and
    the slice kernels that extract and insert them (:mod:`cryotorch.physics.slices.kernels`).

    ``rotations (b, 3, 3)`` (RELION ``A``); ``pixels (m,)``: flat rfft_2d positions of the used
    frequencies (``|k| <= d / 2``), sorted by ``|k|``; ``k (m, 2)``: their ``(kx, ky)``.
    The trilinear neighbours, which the torch kernels read (the numba kernels compute their own
    on the fly), are computed on first use by ``kernels.neighbours``: ``index (b, m, 8)``, flat
    voxel index of the 8 neighbours; ``weight (b, m, 8)``; ``conjugate (b, m)``: read at ``-q``
    (conjugate). Made by :func:`cryotorch.physics.slices.slice_geometry`.
    """

    d: int
    pad: int
    rotations: torch.Tensor
    pixels: torch.Tensor
    k: torch.Tensor
    kernels: Kernels

    @cached_property
    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.kernels.neighbours(self.rotations, self.k, self.d, self.pad)

    @property
    def index(self) -> torch.Tensor:
        return self._neighbours[0]

    @property
    def weight(self) -> torch.Tensor:
        return self._neighbours[1]

    @property
    def conjugate(self) -> torch.Tensor:
        return self._neighbours[2]

    def within_shell(self, max_shell: int) -> SliceGeometry:
        """The same slices limited to the frequencies of shells ``0 .. max_shell``
        (``round(|k|) <= max_shell``, the shells a noise model or E-step counts): a prefix of
        the points, which are sorted by ``|k|``, so that extraction costs what those shells
        hold (RELION's ``current_size``) and gives the same values there, zeros elsewhere.
        Itself where that is every point; the trilinear neighbours, if already computed, are
        shared."""
        radius = self.k.norm(dim=-1)
        m = int(torch.searchsorted(radius.contiguous(), max_shell + 0.5))
        if m >= len(self.pixels):
            return self
        part = SliceGeometry(
            self.d, self.pad, self.rotations, self.pixels[:m], self.k[:m], self.kernels
        )
        if "_neighbours" in self.__dict__:  # computed by the full geometry: shared, not redone
            part.__dict__["_neighbours"] = tuple(t[:, :m] for t in self._neighbours)
        return part


def used_frequencies(d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rfft_2d entries with ``|k| <= d / 2``, sorted by ``|k|`` (ties in rfft_2d order): flat
    positions ``(m,)`` and ``k (m, 2)`` (``kx, ky`` in Fourier pixels, ``like``'s dtype and
    device). The numba kernels cut this order into radial shells of the volume."""
    k = frequency_grid_2d(d, like.device).to(like.dtype).reshape(-1, 2)
    radius = k.norm(dim=-1)
    pixels = torch.nonzero(radius <= d / 2).flatten()
    pixels = pixels[torch.argsort(radius[pixels], stable=True)]
    return pixels, k[pixels]


def trilinear_neighbours(
    rotations: torch.Tensor, k: torch.Tensor, d: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``index (b, m, 8)``, ``weight (b, m, 8)``, ``conjugate (b, m)`` of the points ``k (m, 2)``
    of the slices ``rotations (b, 3, 3)`` (see :class:`SliceGeometry`)."""
    p = pad * d
    px = p // 2 + 1
    # q = pad * A^T (kx, ky, 0): row j of A^T is column j of A.
    q = pad * (
        k[None, :, 0, None] * rotations[:, None, 0, :]
        + k[None, :, 1, None] * rotations[:, None, 1, :]
    )
    conjugate = q[..., 0] < 0
    q = torch.where(conjugate[..., None], -q, q)
    g = q + q.new_tensor([0.0, p // 2, p // 2])  # grid position (x, y, z)
    g0 = torch.floor(g)
    frac = g - g0
    g0 = g0.long()
    # Per axis, the weights and validity of the lower and upper neighbour: (b, m, 2) each.
    # x >= 0 always (the half grid holds kx >= 0); y and z must stay inside [0, p).
    lower_upper = torch.stack([g0, g0 + 1], dim=-1)  # (b, m, 3, 2)
    inside = lower_upper < torch.tensor([px, p, p], device=g0.device)[:, None]
    inside &= lower_upper >= 0
    w = torch.stack([1 - frac, frac], dim=-1) * inside  # (b, m, 3, 2)
    wx, wy, wz = w[..., 0, :], w[..., 1, :], w[..., 2, :]
    vx, vy, vz = inside[..., 0, :], inside[..., 1, :], inside[..., 2, :]
    b, m = g0.shape[:2]
    # Corner c = 4 dz + 2 dy + dx, as the (z, y, x) axes of the outer products below.
    weight = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(
        b, m, 8
    )
    valid = (vz[..., :, None, None] & vy[..., None, :, None] & vx[..., None, None, :]).reshape(
        b, m, 8
    )
    steps = torch.tensor([0, 1], device=g0.device)
    offsets = (
        (steps[:, None, None] * p + steps[None, :, None]) * px + steps[None, None, :]
    ).reshape(8)
    base = (g0[..., 2] * p + g0[..., 1]) * px + g0[..., 0]  # (b, m)
    index = torch.where(valid, base[..., None] + offsets, 0)
    return index, weight, conjugate


def half_weight_x0_column(
    slices: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``slices`` and ``weights (..., d // 2 + 1)`` with their ``kx = 0`` column halved.

    That rfft_2d column holds both members of each Friedel pair, while every other column stands
    for its absent mate too: inserted at half weight and completed by
    :func:`sum_friedel_mates_on_x0_plane`, it counts as often as the others.
    """
    half = torch.ones(slices.shape[-1], dtype=weights.dtype, device=weights.device)
    half[0] = 0.5
    return slices * half, weights * half


def sum_friedel_mates_on_x0_plane(volumes_ft: torch.Tensor) -> torch.Tensor:
    """Add to each entry of the ``x = 0`` plane of ``(..., p, p, p // 2 + 1)`` the conjugate of its
    mirror ``(-y, -z)``: the contributions that insertion at ``-q`` would have made there."""
    plane = volumes_ft[..., 0]
    mirror = torch.roll(plane.flip((-2, -1)), shifts=(1, 1), dims=(-2, -1))  # index i -> p - i
    mirror = mirror.conj() if mirror.is_complex() else mirror
    return torch.cat([(plane + mirror)[..., None], volumes_ft[..., 1:]], dim=-1)
