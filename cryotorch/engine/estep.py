"""The E-step: log-likelihoods of a batch of particles against K class maps.

With ``optimal_scale`` each particle also gets, per class, the least-squares contrast scale
``s_ik = Σ_j w_j Re(conj(c_ij A_kij) X_ij) / Σ_j w_j |c_ij A_kij|²`` (``w = m / σ²`` over
the shells in use, ``s ≥ 0``), and is scored against ``s_ik c_i A_k`` (cryoSPARC's "optimal"
per-particle scale).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.noise import NoiseModel
from cryotorch.physics.slices import extract_central_slices

__all__ = ["EStep", "EStepResult", "crop_centred", "current_box", "log_posterior"]


class EStepResult:
    """What one E-step pass over a batch gives.

    ``loglik (b, k)``: ``-½ Σ_j m_j |X_j - s c_j A_kj|² / σ²_{s(j)}`` over the shells in use;
    ``residual_shells (b, k, n_shells)``: ``Σ_{j in s} m_j |X_j - s c_j A_kj|²`` (for the noise
    update), over the shells in use, and past them the image's power ``Σ_{j in s} m_j |X_j|²``
    (RELION's estimate beyond its ``current_size``: the slices are only extracted where they
    are scored); ``projections (b, k, d, d // 2 + 1)``: the shifted slices ``A`` (without CTF)
    on the shells in use, 0 past them (made when first asked for); ``scale (b, k)`` the
    contrast ``s`` (None: 1).
    """

    def __init__(
        self,
        loglik: torch.Tensor,
        residual_shells: torch.Tensor,
        projections: torch.Tensor | Callable[[], torch.Tensor],
        scale: torch.Tensor | None = None,
    ) -> None:
        self.loglik = loglik
        self.residual_shells = residual_shells
        self._projections = projections
        self.scale = scale

    @property
    def projections(self) -> torch.Tensor:
        if callable(self._projections):
            self._projections = self._projections()
        return self._projections


def current_box(d: int, max_shell: int) -> int:
    """The box of the centred rfft_2d crop that holds every pixel of shells ``0 .. max_shell``
    of a box-``d`` spectrum (``|kx|, |ky| <= max_shell``): ``2 max_shell + 2``, at most ``d``
    (RELION's ``current_size``)."""
    return min(d, 2 * max_shell + 2)


def crop_centred(x: torch.Tensor, box: int) -> torch.Tensor:
    """The ``(..., box, box // 2 + 1)`` lowest frequencies of ``(..., d, d // 2 + 1)`` centred
    rfft_2d values (a view: no copy, no rescaling)."""
    d = x.shape[-2]
    if box >= d:
        return x
    start = d // 2 - box // 2
    return x[..., start : start + box, : box // 2 + 1]


class EStep(nn.Module):
    """Scores every particle of a batch against a central slice of every class map.

    Only the shells scored are worked on (RELION's ``current_size``): the slices are extracted
    on those shells, and the residuals, weights and sums are computed on the smallest centred
    crop of the spectra that holds them (:func:`current_box`), the same numbers as over the
    whole box, at the cost of the shells in use.
    """

    def __init__(self, optimal_scale: bool = False) -> None:
        super().__init__()
        self.optimal_scale = optimal_scale

    def forward(
        self, volumes: torch.Tensor, batch: ParticleBatch, noise: NoiseModel, max_shell: int
    ) -> EStepResult:
        """``volumes (n_voxels, 2k)``: the interleaved padded Fourier volumes of the K classes."""
        assert batch.geometry is not None  # BatchMaker.add_geometry has set it
        slices = extract_central_slices(volumes, batch.geometry.within_shell(max_shell))
        box = current_box(batch.spectra.shape[-2], max_shell)
        shift = crop_centred(batch.shift, box)
        spectra = crop_centred(batch.spectra, box)
        model = crop_centred(batch.ctf, box)[:, None] * crop_centred(slices, box) * shift[:, None]
        weights = crop_centred(noise.pixel_weights(batch.optics_group, max_shell), box)[:, None]
        scale = None
        if self.optimal_scale:
            cross = (weights * (model.conj() * spectra[:, None]).real).sum(dim=(-2, -1))
            power = (weights * (model.real**2 + model.imag**2)).sum(dim=(-2, -1))
            tiny = torch.finfo(power.dtype).tiny
            scale = (cross / power.clamp_min(tiny)).clamp_min(0)  # (b, k)
            model = model * scale[:, :, None, None]
        residual = spectra[:, None] - model
        power = residual.real**2 + residual.imag**2  # (b, k, box, box//2+1)
        residual_shells = noise.shell_sums(power)
        if box < batch.spectra.shape[-2]:  # outside the crop the slices are 0: |X|²
            image = batch.spectra.real**2 + batch.spectra.imag**2
            inside = torch.zeros_like(image[0])
            crop_centred(inside, box).fill_(1)
            residual_shells = residual_shells + noise.shell_sums(image * (1 - inside))[:, None]
        loglik = -0.5 * (power * weights).sum(dim=(-2, -1))
        return EStepResult(loglik, residual_shells, lambda: slices * batch.shift[:, None], scale)


def log_posterior(loglik: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """``log γ_ik = log π_k + ℓ_ik - logsumexp_k'(log π_k' + ℓ_ik')``: ``(b, k)``."""
    scores = loglik + log_prior
    return scores - torch.logsumexp(scores, dim=1, keepdim=True)
