"""The two posterior layers: class similarity and force-hard, and the effective sample size.

**Class similarity** β ∈ [0, 1] makes every particle spread its probability over the classes:
β = 1 puts every particle in every class equally, β = 0 leaves the E-step's posterior as it is
(which is not hard classification). Two forms:

* ``temperature``: γ'_ik ∝ (π_k exp ℓ_ik)^(1-β), i.e. a softmax of the log-scores at
  temperature 1 / (1 - β);
* ``mixing``: γ' = (1 - β) γ + β / K.

**Force hard**: forward one-hot of argmax γ', backward the gradient of γ' (straight through):
``hard + (γ' - γ'.detach())``. With it on, β has no effect on the result.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = ["ClassSimilarity", "StraightThroughHard", "effective_sample_size", "tune_similarity"]

SimilarityForm = Literal["temperature", "mixing"]
ArrayOrTensor = TypeVar("ArrayOrTensor", torch.Tensor, np.ndarray)


class ClassSimilarity(nn.Module):
    """γ' from log-scores ``log π_k + ℓ_ik`` ``(b, k)`` at class similarity ``beta``.

    ``forward(scores, beta)`` returns ``(b, k)`` probabilities. At β = 1 every entry is 1/K;
    at β = 0 it is the posterior softmax(scores).
    """

    def __init__(self, form: SimilarityForm = "temperature") -> None:
        super().__init__()
        if form not in ("temperature", "mixing"):
            raise ValueError(
                f"posterior.similarity.form must be 'temperature' or 'mixing', got {form!r}"
            )
        self.form = form

    def forward(self, scores: torch.Tensor, beta: float) -> torch.Tensor:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"class similarity beta must be in [0, 1], got {beta}")
        if self.form == "temperature":
            return torch.softmax((1.0 - beta) * scores, dim=1)
        k = scores.shape[1]
        return (1.0 - beta) * torch.softmax(scores, dim=1) + beta / k


class StraightThroughHard(nn.Module):
    """Forward: one-hot of the argmax of ``probabilities (b, k)``; backward: their gradient."""

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        hard = torch.nn.functional.one_hot(probabilities.argmax(dim=1), probabilities.shape[1])
        # (p - p.detach()) is exactly 0, so the forward value is exactly one-hot.
        return hard.to(probabilities.dtype) + (probabilities - probabilities.detach())


def effective_sample_size(probabilities: ArrayOrTensor) -> ArrayOrTensor:
    """Per-particle ESS ``1 / Σ_k γ_ik²``: ``(b,)``, from 1 (one class) to K (even spread).

    ``probabilities (b, k)``: a tensor or a numpy array (the outputs' posteriors); the result
    is of the same kind and dtype (pass float64 for the written ESS columns).
    """
    return 1.0 / (probabilities**2).sum(1)  # axis 1 (numpy), dim 1 (torch)


@torch.no_grad()
def tune_similarity(
    scores: torch.Tensor, layer: nn.Module, target_fraction: float = 0.75, steps: int = 40
) -> float:
    """β at which the mean ESS of ``layer(scores, β)`` is ``target_fraction · K`` (cryoSPARC's
    auto-tuned initial class similarity, target 0.75). ``scores (b, k)``: log π + ℓ;
    ``layer``: :class:`ClassSimilarity` or any layer called as it is.

    The mean ESS grows with β (from that of the posterior at β = 0 to K at β = 1), so bisection
    finds it; 0 if the posterior alone already spreads that much.
    """
    k = scores.shape[1]
    target = target_fraction * k
    scores = scores.double()

    def mean_ess(beta: float) -> float:
        return float(effective_sample_size(layer(scores, beta)).mean())

    if k == 1 or mean_ess(0.0) >= target:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if mean_ess(middle) < target:
            low = middle
        else:
            high = middle
    return high
