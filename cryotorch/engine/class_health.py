"""Empty and duplicate classes: finding them, and re-seeding a class from half of another.

RELION and cryoSPARC users meet both: a class whose share of the particles falls to nothing,
and two classes that converge to the same map. cryotorch reports them every iteration (in the
table and TensorBoard); with ``model.reseed > 0`` it also re-seeds such a class from a random
half of the largest class's particles (a split of the largest class), up to that many times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cryotorch.physics.masks import lowpass_3d

__all__ = ["duplicate_classes", "empty_classes", "plan_reseed", "split_posteriors"]


def empty_classes(prior: torch.Tensor, min_fraction: float) -> list[int]:
    """Classes (0-based) whose share ``prior (k,)`` is below ``min_fraction``."""
    return [int(k) for k in torch.nonzero(prior < min_fraction).flatten()]


def duplicate_classes(
    maps: torch.Tensor,
    mask: torch.Tensor,
    resolution: float,
    pixel_size: float,
    min_correlation: float,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, correlation)``, ``i < j``, of class maps ``(k, d, d, d)`` whose
    correlation inside ``mask``, both low-passed to ``resolution`` Å, is above
    ``min_correlation``."""
    k = maps.shape[0]
    if k < 2:
        return []
    x = (lowpass_3d(maps.double(), resolution, pixel_size) * mask).flatten(1)
    x = x - x.mean(1, keepdim=True)
    norms = x.norm(dim=1).clamp_min(1e-300)
    corr = (x @ x.T) / (norms[:, None] * norms[None, :])
    i, j = torch.triu_indices(k, k, 1)
    keep = corr[i, j] > min_correlation
    return [
        (int(a), int(b), float(c))
        for a, b, c in zip(i[keep], j[keep], corr[i, j][keep], strict=True)
    ]


def plan_reseed(
    prior: torch.Tensor,
    empty: list[int],
    pairs: list[tuple[int, int, float]],
    just_split: Sequence[tuple[int, int]] = (),
) -> tuple[int, int] | None:
    """The split to make next, ``(source, target)``, or None: a random half of the largest
    class ``source`` (``prior (k,)``) moves to ``target``, an ``empty`` class or one class of
    a look-alike pair of ``pairs`` (the other than ``source``). The two halves of a class split
    in this iteration (``just_split``) start alike: such a pair is left a pass to part."""
    source = int(prior.argmax())
    fresh = {frozenset(pair) for pair in just_split}
    candidates = list(empty)
    for i, j, _ in pairs:
        if frozenset((i, j)) not in fresh:
            candidates.append(i if j == source else j)
    target = next((t for t in candidates if t != source), None)
    return None if target is None else (source, target)


def _coin(rows: np.ndarray, seed: int, number: int) -> np.ndarray:
    """A fair coin per row (bool), from the splitmix64 hash of ``(row, seed, number)``."""
    offset = ((seed * 1_000_003 + number) * 0x9E3779B97F4A7C15) % 2**64
    x = (rows.astype(np.uint64) + np.uint64(offset)) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) & np.uint64(1)).astype(bool)


def split_posteriors(
    gamma: torch.Tensor, rows: np.ndarray, splits: list[tuple[int, int]], seed: int
) -> torch.Tensor:
    """Move the weight of class ``source`` to class ``target`` for a random half of the
    particles, for each ``(source, target)`` of ``splits``. ``gamma (b, k)`` of table
    ``rows``; the half depends only on ``seed`` and the row (the same in every batch and on
    resume)."""
    if not splits:
        return gamma
    gamma = gamma.clone()
    for number, (source, target) in enumerate(splits):
        moved = torch.as_tensor(_coin(rows, seed, number), device=gamma.device)
        gamma[moved, target] += gamma[moved, source]
        gamma[moved, source] = 0
    return gamma
