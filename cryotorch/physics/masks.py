"""Soft masks and low-pass filters."""

from __future__ import annotations

import math
from typing import cast

import torch

from cryotorch.physics.fourier import frequency_grid_2d, frequency_grid_3d, irfft_3d, rfft_3d

__all__ = [
    "distance_to_mask",
    "lowpass_2d_filter",
    "lowpass_3d",
    "mask_from_map",
    "raised_cosine",
    "soft_sphere",
    "solvent_sphere",
]


def raised_cosine(r: torch.Tensor, radius: float, edge: float) -> torch.Tensor:
    """1 inside ``radius``, 0 beyond ``radius + edge``, a raised cosine in between."""
    if edge <= 0:
        return (r <= radius).to(r.dtype)
    t = ((r - radius) / edge).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def soft_sphere(
    d: int,
    radius_px: float,
    edge_px: float = 3.0,
    dim: int = 3,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A soft spherical (``dim=3``, ``(d, d, d)``) or circular (``dim=2``) mask about ``d // 2``."""
    c = torch.arange(d, device=device, dtype=torch.float32) - d // 2
    grids = torch.meshgrid(*([c] * dim), indexing="ij")
    # A tensor: sum's start 0 is only returned for no grids, and dim >= 1 gives some.
    r = torch.sqrt(cast(torch.Tensor, sum(g**2 for g in grids)))
    return raised_cosine(r, radius_px, edge_px)


def solvent_sphere(
    d: int,
    pixel_size: float,
    diameter_angstrom: float,
    edge_angstrom: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(d, d, d)`` spherical solvent mask in physical units: 1 within ``diameter_angstrom / 2``
    of the centre, 0 beyond a further ``edge_angstrom``, a raised cosine in between. The same
    mask (in Å) whatever box the particles were Fourier-cropped to."""
    radius = diameter_angstrom / 2 / pixel_size
    return soft_sphere(d, radius, edge_angstrom / pixel_size, device=device)


def lowpass_3d(
    volumes: torch.Tensor, resolution_angstrom: float, pixel_size: float, edge_shells: float = 2.0
) -> torch.Tensor:
    """Low-pass real volumes ``(..., d, d, d)`` to ``resolution_angstrom`` (raised-cosine edge).

    Frequencies up to ``d * pixel_size / resolution`` Fourier pixels pass; the edge falls to zero
    over ``edge_shells`` more.
    """
    d = volumes.shape[-1]
    cutoff = d * pixel_size / resolution_angstrom
    r = frequency_grid_3d(d, volumes.device).norm(dim=-1)
    return irfft_3d(rfft_3d(volumes) * raised_cosine(r, cutoff, edge_shells).to(volumes.dtype), d)


def lowpass_2d_filter(d: int, cutoff_px: float, edge_shells: float = 2.0) -> torch.Tensor:
    """``(d, d // 2 + 1)`` raised-cosine low-pass on the rfft_2d grid (cutoff in Fourier pixels)."""
    return raised_cosine(frequency_grid_2d(d).norm(dim=-1), cutoff_px, edge_shells)


def distance_to_mask(binary: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Exact Euclidean distance (voxels) of every voxel of ``(d, d, d)`` to the nearest ``True``
    voxel of ``binary`` (0 inside; ``inf`` everywhere if it has none).

    The separable squared-distance transform: along each axis in turn,
    ``D'[i] = min_j D[j] + (i - j)²``, done by brute force over ``j`` in chunks (``O(d⁴)``
    work, about a second at ``d = 128``; masks are made once per run).
    """
    d = binary.shape[-1]
    big = float(3 * d * d + 1)  # larger than any squared distance in the box
    dist = torch.where(binary, 0.0, big).to(torch.float32)
    i = torch.arange(d, device=binary.device, dtype=torch.float32)
    offsets = (i[:, None] - i[None, :]) ** 2  # (i, j)
    for axis in (0, 1, 2):
        moved = dist.movedim(axis, -1).contiguous()  # (a, b, j)
        out = torch.empty_like(moved)
        for start in range(0, d, chunk):
            block = moved[start : start + chunk]  # (c, b, j)
            out[start : start + chunk] = (block[:, :, None, :] + offsets).amin(-1)
        dist = out.movedim(-1, axis)
    dist = dist.sqrt()
    return torch.where(dist >= math.sqrt(big) - 1e-3, torch.inf, dist)


def mask_from_map(
    volume: torch.Tensor,
    pixel_size: float,
    threshold: float,
    extend_angstrom: float = 6.0,
    soft_edge_angstrom: float = 8.0,
    lowpass_angstrom: float = 15.0,
) -> torch.Tensor:
    """A soft solvent mask ``(d, d, d)`` from a map (as ``relion_mask_create`` or cryoSPARC's
    dynamic mask): low-pass the map to ``lowpass_angstrom``, keep the voxels above ``threshold``
    times its maximum, extend by ``extend_angstrom``, then fall to 0 over ``soft_edge_angstrom``
    with a raised cosine."""
    smooth = lowpass_3d(volume.double(), lowpass_angstrom, pixel_size)
    binary = smooth > threshold * smooth.max()
    dist = distance_to_mask(binary) * pixel_size  # Å
    return raised_cosine(dist, extend_angstrom, soft_edge_angstrom).to(volume.dtype)
