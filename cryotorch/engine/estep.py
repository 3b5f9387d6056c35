"""The E-step: log-likelihoods of a batch of particles against K class maps."""

from __future__ import annotations

import torch
from torch import nn

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.noise import NoiseModel
from cryotorch.physics.slices import extract_central_slices

__all__ = ["EStep", "EStepResult", "log_posterior"]


class EStepResult:
    """What one E-step pass over a batch gives.

    ``loglik (b, k)``: ``-½ Σ_j m_j |X_j - c_j A_kj|² / σ²_{s(j)}`` over the shells in use;
    ``residual_shells (b, k, n_shells)``: ``Σ_{j in s} m_j |X_j - c_j A_kj|²`` (for the noise
    update); ``projections (b, k, d, d // 2 + 1)``: the shifted slices ``A`` (without CTF).
    """

    def __init__(self, loglik, residual_shells, projections):
        self.loglik = loglik
        self.residual_shells = residual_shells
        self.projections = projections


class EStep(nn.Module):
    """Scores every particle of a batch against a central slice of every class map."""

    def forward(
        self, volumes: torch.Tensor, batch: ParticleBatch, noise: NoiseModel, max_shell: int
    ) -> EStepResult:
        """``volumes (n_voxels, 2k)``: the interleaved padded Fourier volumes of the K classes."""
        projections = extract_central_slices(volumes, batch.geometry) * batch.shift[:, None]
        residual = batch.spectra[:, None] - batch.ctf[:, None] * projections
        power = residual.real**2 + residual.imag**2  # (b, k, d, d//2+1)
        residual_shells = noise.shell_sums(power)
        weights = noise.pixel_weights(batch.optics_group, max_shell)  # (b, d, d//2+1)
        loglik = -0.5 * (power * weights[:, None]).sum(dim=(-2, -1))
        return EStepResult(loglik, residual_shells, projections)


def log_posterior(loglik: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """``log γ_ik = log π_k + ℓ_ik - logsumexp_k'(log π_k' + ℓ_ik')``: ``(b, k)``."""
    scores = loglik + log_prior
    return scores - torch.logsumexp(scores, dim=1, keepdim=True)
