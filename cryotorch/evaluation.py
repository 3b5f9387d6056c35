"""Scores of a classification against known classes (simulated data); the best score any
method can reach on them is :func:`cryotorch.oracle.oracle_posteriors`'s."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

__all__ = ["classification_accuracy", "merged_accuracy", "read_true_classes"]

TRUE_CLASSES = "true_classes.txt"  # beside the particles, written by cryotorch-simulate
SIMULATION_RECORD = "simulation.json"  # beside them too: the noise and proportions


def read_true_classes(folder: str | Path) -> np.ndarray:
    """The true classes ``(n,)``, 0-based, of simulated particles: ``folder/true_classes.txt``
    (one 1-based class per line, in the particle table's order)."""
    return np.atleast_1d(np.loadtxt(Path(folder) / TRUE_CLASSES, dtype=np.int64)) - 1


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


def merged_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of particles in the right class once every predicted class is merged into the
    true class most of its particles belong to (many classes to one, as a user merges classes
    that look alike after asking for more than are present). ``predicted``, ``truth``: ``(n,)``
    0-based labels. Never below :func:`classification_accuracy`; with as many classes as
    particles it is 1, so compare it only at a small excess of classes."""
    k_true = int(truth.max()) + 1
    correct = 0
    for c in np.unique(predicted):
        correct += int(np.bincount(truth[predicted == c], minlength=k_true).max())
    return correct / len(truth)
