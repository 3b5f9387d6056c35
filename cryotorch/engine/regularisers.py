"""Regularisers: how the M-step turns sufficient statistics into class maps.

One small interface, :class:`Regulariser`, serves both optimisers. EM calls it with the
statistics and gets the K class maps and a few numbers for the table; gradient training
(:mod:`cryotorch.engine.gradient`) adds its :meth:`Regulariser.penalty` (a negative log prior,
differentiable) to the loss and applies its :meth:`Regulariser.filter_maps` after every epoch.
Three implementations:

- :class:`TauSquaredPrior` (RELION): the Wiener-like division
  ``V = Σ γ Pᵀ(c X/σ²) / (Σ γ Pᵀ(c²/σ²) + 1 / (pad³ T τ²))`` (see :mod:`cryotorch.engine.mstep`).
- :class:`HalfSetFSCFilter` (cryoSPARC): each class is reconstructed from each half-set of the
  particles; the FSC between the two halves gives, per shell, the filter
  ``sqrt(2 FSC / (1 + FSC))`` (0 where the FSC is not positive) applied to the class map from
  all its particles. Its FSC = 0.143 resolution is reported per class and iteration.
- :class:`LocalWienerDenoiser` (the idea of RELION 5's Blush, with a fixed classical denoiser
  in place of a network): the T·τ² maps, then, inside the solvent mask, a local (adaptive)
  Wiener filter ``μ + max(v - ν², 0) / max(v, ν²) · (x - μ)`` with the mean μ and variance v
  of each voxel's ``window³`` neighbourhood and ν² the mean of v (as ``scipy.signal.wiener``):
  flat, noisy regions are smoothed, edges with a local variance above the noise kept.

A new regulariser subclasses :class:`Regulariser` (a ``torch.nn.Module``: call
``super().__init__()`` first; parameters and buffers of its own then move and save with the
M-step, :class:`~cryotorch.engine.mstep.MStep`), implements ``forward`` and sets ``half_sets``
if it needs the statistics kept per half-set.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.physics.fourier import irfft_3d, rfft_3d
from cryotorch.physics.fsc import fourier_shell_correlation, resolution_at_threshold
from cryotorch.physics.projector import reconstruct_from_sums
from cryotorch.physics.shells import mean_per_shell_3d, shell_index_3d

__all__ = [
    "REGULARISERS",
    "HalfSetFSCFilter",
    "LocalWienerDenoiser",
    "Regulariser",
    "TauSquaredPrior",
    "local_wiener_filter",
    "make_regulariser",
]


class Regulariser(nn.Module):
    """Statistics -> class maps ``(k, d, d, d)``, solvent-masked, and table columns."""

    half_sets: bool = False  # True: the statistics come with 2k channels (see mstep.half)

    @abstractmethod
    def forward(
        self,
        stats: SufficientStatistics,
        k: int,
        d: int,
        pad: int,
        mask: torch.Tensor,
        pixel_size: float,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def penalty(self, maps: torch.Tensor) -> torch.Tensor:
        """Negative log prior of ``maps (k, d, d, d)`` for gradient training (default: none)."""
        return maps.new_zeros(())

    def filter_maps(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Applied to the maps after each epoch of gradient training (default: nothing)."""
        return maps


class TauSquaredPrior(Regulariser):
    """RELION's prior ``1 / (pad³ T τ²)``; ``tau2_fudge`` is T."""

    def __init__(self, tau2_fudge: float = 4.0) -> None:
        super().__init__()
        self.tau2_fudge = tau2_fudge

    def forward(
        self,
        stats: SufficientStatistics,
        k: int,
        d: int,
        pad: int,
        mask: torch.Tensor,
        pixel_size: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return update_maps(stats.merged_halves(k), d, pad, self.tau2_fudge, mask), {}

    def penalty(self, maps: torch.Tensor) -> torch.Tensor:
        """``Σ_k Σ_l |V_kl|² / (2 T τ²_k(s(l)))``, τ² each class's own power per shell (held
        fixed: no gradient through it; floored, see below), over the rfft_3d half spectrum: the
        Gaussian prior of RELION's M-step, whose maximum a posteriori is the Wiener-like
        division above. τ² is the mean power over the same half-spectrum entries the sum runs
        over, corners included (unweighted: see :func:`mean_per_shell_3d`)."""
        d = maps.shape[-1]
        spectra = rfft_3d(maps)
        power = spectra.real**2 + spectra.imag**2  # (k, d, d, d//2+1)
        shells = shell_index_3d(d, maps.device).clamp_max(d // 2)
        tau2 = mean_per_shell_3d(power.detach(), hermitian=False, corners_in_nyquist=True)
        # A shell with (next to) no power yet, e.g. beyond the initial low-pass, would get an
        # infinitely strong prior with a gradient ~ 1 / |V|: its τ² is floored at 1e-3 of the
        # strongest shell's.
        floor = 1e-3 * tau2.amax(dim=1, keepdim=True)
        tau2 = torch.maximum(tau2, floor).clamp_min(torch.finfo(maps.dtype).tiny)
        return (power / (2 * self.tau2_fudge * tau2[:, shells])).sum()


class HalfSetFSCFilter(Regulariser):
    """cryoSPARC's per-class FSC filter between half-set reconstructions."""

    half_sets = True

    def forward(
        self,
        stats: SufficientStatistics,
        k: int,
        d: int,
        pad: int,
        mask: torch.Tensor,
        pixel_size: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
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


def local_wiener_filter(volumes: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Adaptive Wiener filter of ``volumes (k, d, d, d)`` over ``window³`` neighbourhoods
    (``scipy.signal.wiener`` in 3D: noise power = the mean local variance, per volume)."""
    x = volumes[:, None]
    pool = torch.nn.functional.avg_pool3d
    mean = pool(x, window, stride=1, padding=window // 2, count_include_pad=True)
    var = pool(x * x, window, stride=1, padding=window // 2, count_include_pad=True) - mean**2
    var = var.clamp_min(0)
    noise = var.mean(dim=(2, 3, 4), keepdim=True)
    gain = (var - noise).clamp_min(0) / torch.maximum(var, noise).clamp_min(
        torch.finfo(volumes.dtype).tiny
    )
    return (mean + gain * (x - mean))[:, 0]


class LocalWienerDenoiser(TauSquaredPrior):
    """T·τ² maps, then the local Wiener filter inside the solvent mask (see the module)."""

    def __init__(self, tau2_fudge: float = 4.0, window: int = 3) -> None:
        super().__init__(tau2_fudge)
        self.window = window

    def forward(
        self,
        stats: SufficientStatistics,
        k: int,
        d: int,
        pad: int,
        mask: torch.Tensor,
        pixel_size: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        maps, columns = super().forward(stats, k, d, pad, mask, pixel_size)
        return self.filter_maps(maps, mask), columns

    def filter_maps(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return local_wiener_filter(maps, self.window) * mask


REGULARISERS = ("tau2", "fsc", "denoise")


def make_regulariser(name: str, tau2_fudge: float = 4.0) -> Regulariser:
    """``tau2``, ``fsc`` or ``denoise`` (``model.regulariser``)."""
    if name == "tau2":
        return TauSquaredPrior(tau2_fudge)
    if name == "fsc":
        return HalfSetFSCFilter()
    if name == "denoise":
        return LocalWienerDenoiser(tau2_fudge)
    raise ValueError(f"model.regulariser must be one of {', '.join(REGULARISERS)}, got {name!r}")
