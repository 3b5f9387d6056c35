"""Soft masks and low-pass filters."""

from __future__ import annotations

import math

import torch

from cryotorch.physics.fourier import frequency_grid_2d, frequency_grid_3d, irfft_3d, rfft_3d

__all__ = ["lowpass_2d_filter", "lowpass_3d", "raised_cosine", "soft_sphere"]


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
    r = torch.sqrt(sum(g**2 for g in grids))
    return raised_cosine(r, radius_px, edge_px)


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
