"""The E-step: log-likelihoods of a batch of particles against K class maps.

With ``optimal_scale`` each particle also gets, per class, the least-squares contrast scale
``s_ik = Σ_j w_j Re(conj(c_ij A_kij) X_ij) / Σ_j w_j |c_ij A_kij|²`` (``w = m / σ²`` over
the shells in use, ``s ≥ 0``), and is scored against ``s_ik c_i A_k`` (cryoSPARC's "optimal"
per-particle scale).
"""

from __future__ import annotations

import torch
from torch import nn

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.noise import NoiseModel
from cryotorch.physics.slices import extract_central_slices

__all__ = ["EStep", "EStepResult", "log_posterior"]


class EStepResult:
    """What one E-step pass over a batch gives.

    ``loglik (b, k)``: ``-½ Σ_j m_j |X_j - s c_j A_kj|² / σ²_{s(j)}`` over the shells in use;
    ``residual_shells (b, k, n_shells)``: ``Σ_{j in s} m_j |X_j - s c_j A_kj|²`` (for the noise
    update), over the shells in use, and past them the image's power ``Σ_{j in s} m_j |X_j|²``
    (RELION's estimate beyond its ``current_size``: the slices are only extracted where they
    are scored); ``projections (b, k, d, d // 2 + 1)``: the shifted slices ``A`` (without CTF)
    on the shells in use, 0 past them; ``scale (b, k)`` the contrast ``s`` (None: 1).
    """

    def __init__(
        self,
        loglik: torch.Tensor,
        residual_shells: torch.Tensor,
        projections: torch.Tensor,
        scale: torch.Tensor | None = None,
    ) -> None:
        self.loglik = loglik
        self.residual_shells = residual_shells
        self.projections = projections
        self.scale = scale


class EStep(nn.Module):
    """Scores every particle of a batch against a central slice of every class map."""

    def __init__(self, optimal_scale: bool = False) -> None:
        super().__init__()
        self.optimal_scale = optimal_scale

    def forward(
        self, volumes: torch.Tensor, batch: ParticleBatch, noise: NoiseModel, max_shell: int
    ) -> EStepResult:
        """``volumes (n_voxels, 2k)``: the interleaved padded Fourier volumes of the K classes."""
        assert batch.geometry is not None  # BatchMaker.add_geometry has set it
        # Only the shells scored are extracted (RELION's current_size): the same slices there,
        # zeros beyond, where the residual is then the image's own power.
        geometry = batch.geometry.within_shell(max_shell)
        projections = extract_central_slices(volumes, geometry) * batch.shift[:, None]
        model = batch.ctf[:, None] * projections  # (b, k, d, d//2+1)
        weights = noise.pixel_weights(batch.optics_group, max_shell)[:, None]  # (b, 1, d, dh)
        scale = None
        if self.optimal_scale:
            cross = (weights * (model.conj() * batch.spectra[:, None]).real).sum(dim=(-2, -1))
            power = (weights * (model.real**2 + model.imag**2)).sum(dim=(-2, -1))
            tiny = torch.finfo(power.dtype).tiny
            scale = (cross / power.clamp_min(tiny)).clamp_min(0)  # (b, k)
            model = model * scale[:, :, None, None]
        residual = batch.spectra[:, None] - model
        power = residual.real**2 + residual.imag**2  # (b, k, d, d//2+1)
        residual_shells = noise.shell_sums(power)
        loglik = -0.5 * (power * weights).sum(dim=(-2, -1))
        return EStepResult(loglik, residual_shells, projections, scale)


def log_posterior(loglik: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """``log γ_ik = log π_k + ℓ_ik - logsumexp_k'(log π_k' + ℓ_ik')``: ``(b, k)``."""
    scores = loglik + log_prior
    return scores - torch.logsumexp(scores, dim=1, keepdim=True)
