"""A user's own modules for ``custom.*`` (tests/test_custom_modules.py makes them through the
configuration, as a user's own package would be)."""

from __future__ import annotations

import torch
from torch import nn

from cryotorch.engine.regularisers import TauSquaredPrior

CALLS = {"regulariser": 0}


class CountedTauSquared(TauSquaredPrior):
    """RELION's τ² prior, counting its M-steps."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CALLS["regulariser"] += 1
        return super().forward(*args, **kwargs)


class Uniform(nn.Module):
    """Every particle in every class equally, whatever β: ``(b, k)`` of ``1 / k``."""

    def __init__(self, floor: float = 0.0) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, scores: torch.Tensor, beta: float) -> torch.Tensor:
        return torch.full_like(scores, 1.0 / scores.shape[1])


class NotProbabilities(nn.Module):
    def forward(self, scores: torch.Tensor, beta: float) -> torch.Tensor:
        return scores
