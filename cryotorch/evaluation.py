"""Scores of a classification against known classes (simulated data)."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["classification_accuracy"]


def classification_accuracy(predicted: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Fraction of particles in the right class under the best matching of class labels.

    ``predicted``, ``truth``: ``(n,)`` 0-based labels; ``k`` classes predicted (the truth may
    have more or fewer: unmatched classes count as wrong). Exhaustive over label permutations
    for up to 7 labels, greedy on the confusion matrix beyond.
    """
    k = max(k, int(truth.max()) + 1, int(predicted.max()) + 1)
    confusion = np.bincount(predicted * k + truth, minlength=k * k).reshape(k, k)
    if k <= 7:
        best = max(
            sum(confusion[i, p] for i, p in enumerate(perm))
            for perm in itertools.permutations(range(k))
        )
    else:
        best, c = 0, confusion.copy()
        for _ in range(k):
            i, j = np.unravel_index(c.argmax(), c.shape)
            best += c[i, j]
            c[i, :] = -1
            c[:, j] = -1
    return float(best) / len(truth)
