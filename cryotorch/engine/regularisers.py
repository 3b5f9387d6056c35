"""Regularisers: how the M-step turns sufficient statistics into class maps.

One small interface, :class:`Regulariser`: called with the statistics, it returns the K class
maps and a few numbers for the table. Two implementations:

- :class:`TauSquaredPrior` (RELION): the Wiener-like division
  ``V = Σ γ Pᵀ(c X/σ²) / (Σ γ Pᵀ(c²/σ²) + 1 / (pad³ T τ²))`` (see :mod:`cryotorch.engine.mstep`).
- :class:`HalfSetFSCFilter` (cryoSPARC): each class is reconstructed from each half-set of the
  particles; the FSC between the two halves gives, per shell, the filter
  ``sqrt(2 FSC / (1 + FSC))`` (0 where the FSC is not positive) applied to the class map from
  all its particles. Its FSC = 0.143 resolution is reported per class and iteration.

A new regulariser subclasses :class:`Regulariser` and sets ``half_sets`` if it needs the
statistics kept per half-set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.physics.fourier import irfft_3d, rfft_3d
from cryotorch.physics.fsc import fourier_shell_correlation, resolution_at_threshold
from cryotorch.physics.projector import reconstruct_from_sums
from cryotorch.physics.shells import shell_index_3d

__all__ = ["HalfSetFSCFilter", "Regulariser", "TauSquaredPrior", "make_regulariser"]


class Regulariser(ABC):
    """Statistics -> class maps ``(k, d, d, d)``, solvent-masked, and table columns."""

    half_sets: bool = False  # True: the statistics come with 2k channels (see mstep.half)

    @abstractmethod
    def __call__(
        self,
        stats: SufficientStatistics,
        k: int,
        d: int,
        pad: int,
        mask: torch.Tensor,
        pixel_size: float,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class TauSquaredPrior(Regulariser):
    """RELION's prior ``1 / (pad³ T τ²)``; ``tau2_fudge`` is T."""

    def __init__(self, tau2_fudge: float = 4.0) -> None:
        self.tau2_fudge = tau2_fudge

    def __call__(self, stats, k, d, pad, mask, pixel_size):
        return update_maps(stats.merged_halves(k), d, pad, self.tau2_fudge, mask), {}


class HalfSetFSCFilter(Regulariser):
    """cryoSPARC's per-class FSC filter between half-set reconstructions."""

    half_sets = True

    def __call__(self, stats, k, d, pad, mask, pixel_size):
        halves = []
        for h in (0, 1):
            half = stats.half(h, k)
            halves.append(reconstruct_from_sums(half.data, half.weight, d, pad) * mask)
        fsc = fourier_shell_correlation(halves[0].double(), halves[1].double())  # (k, shells)
        merged = stats.merged_halves(k)
        maps = reconstruct_from_sums(merged.data, merged.weight, d, pad)
        positive = fsc.clamp_min(0)
        weight = torch.sqrt(2 * positive / (1 + positive)).to(maps.dtype)  # (k, n_shells)
        shells = shell_index_3d(d, maps.device).clamp_max(d // 2)
        filtered = irfft_3d(rfft_3d(maps) * weight[:, shells], d) * mask
        columns = {
            f"class_{i + 1:03d}_fsc_resolution": resolution_at_threshold(fsc[i], d, pixel_size)
            for i in range(k)
        }
        return filtered, columns


def make_regulariser(name: str, tau2_fudge: float = 4.0) -> Regulariser:
    """``tau2`` or ``fsc`` (``model.regulariser``)."""
    if name == "tau2":
        return TauSquaredPrior(tau2_fudge)
    if name == "fsc":
        return HalfSetFSCFilter()
    raise ValueError(f"model.regulariser must be tau2 or fsc, got {name!r}")
