"""Schedules over iterations: class similarity β, force-hard, learning rate, resolution.

An *iteration* is one M-step: one mini-batch of online EM, or one full pass of full-batch EM;
they are counted from 0 across both phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["HardSchedule", "ResolutionSchedule", "SimilaritySchedule", "online_learning_rate"]

HardMode = Literal["never", "always", "after_anneal", "first_n"]


@dataclass(frozen=True)
class SimilaritySchedule:
    """β = ``start`` until ``anneal_start``, then linearly to 0 at ``anneal_end`` (cryoSPARC:
    0.5, annealed to 0 by iteration 10)."""

    start: float = 0.5
    anneal_start: int = 0
    anneal_end: int = 10
    auto_tune: bool = False  # True: ``start`` is tuned on the first batch (see tune_similarity)
    target_ess_fraction: float = 0.75  # the mean class ESS, as a fraction of K, it tunes to

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"posterior.similarity.start must be in [0, 1], got {self.start}")
        if self.anneal_end < self.anneal_start:
            raise ValueError(
                f"posterior.similarity.anneal_end ({self.anneal_end}) must not be before "
                f"posterior.similarity.anneal_start ({self.anneal_start})"
            )

    def beta(self, iteration: int) -> float:
        if iteration <= self.anneal_start:
            return self.start
        if iteration >= self.anneal_end:
            return 0.0
        return self.start * (self.anneal_end - iteration) / (self.anneal_end - self.anneal_start)


@dataclass(frozen=True)
class HardSchedule:
    """When force-hard is on: ``never``; ``always``; ``after_anneal`` (from the iteration at
    which β reaches 0); ``first_n`` (for iterations ``0 .. n - 1``, then soft)."""

    mode: HardMode = "never"
    n_iterations: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("never", "always", "after_anneal", "first_n"):
            raise ValueError(
                f"posterior.hard must be never|always|after_anneal|first_n, got {self.mode!r}"
            )

    def is_hard(self, iteration: int, beta: float) -> bool:
        if self.mode == "always":
            return True
        if self.mode == "after_anneal":
            return beta == 0.0
        if self.mode == "first_n":
            return iteration < self.n_iterations
        return False


def online_learning_rate(
    step: int, n_steps: int, initial: float = 0.4, half_life_percent: float = 50.0
) -> float:
    """Online-EM rate at ``step`` of ``n_steps``: ``initial``, halved every ``half_life_percent``
    of the online-EM steps (cryoSPARC's recipe)."""
    half_life = max(n_steps * half_life_percent / 100.0, 1e-9)
    return initial * math.pow(0.5, step / half_life)


@dataclass(frozen=True)
class ResolutionSchedule:
    """Resolution (Å) the E-step uses: ``start`` at iteration 0, linearly to ``end`` at
    ``reach_at``, then ``end``. The maps are reconstructed to the working box's Nyquist."""

    start: float
    end: float
    reach_at: int = 10

    def resolution(self, iteration: int) -> float:
        if iteration >= self.reach_at:
            return self.end
        return self.start + (self.end - self.start) * iteration / max(self.reach_at, 1)

    def reached(self, iteration: int, d: int, pixel_size: float) -> bool:
        """Whether the E-step uses, at ``iteration``, the shells it will use at ``end``: true from
        ``reach_at`` on, and from the start when ``start`` and ``end`` give the same shell (equal
        resolutions, or both past the Nyquist of box ``d``)."""
        final = self.max_shell(self.reach_at, d, pixel_size)
        return self.max_shell(iteration, d, pixel_size) == final

    def max_shell(self, iteration: int, d: int, pixel_size: float) -> int:
        """Highest shell (Fourier pixels of box ``d``) within the resolution at ``iteration``."""
        return max(1, min(d // 2, int(d * pixel_size / self.resolution(iteration))))
