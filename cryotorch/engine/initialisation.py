"""Initial class maps by PCA: many small random-subset reconstructions, clustered into K.

cryoSPARC's "PCA" start: the particles are split at random into M subsets, each reconstructed
(low-passed, masked); the M maps are projected on their first ``K - 1`` principal components
and clustered into K groups by k-means; each class starts from the reconstruction of the
particles of its group. Subsets that happen to hold more of one conformation pull apart along
the first components, so the K starting maps already differ the way the data do.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cluster_maps", "kmeans"]


def kmeans(
    points: torch.Tensor, k: int, rng: np.random.Generator, iterations: int = 50
) -> np.ndarray:
    """Labels ``(m,)`` (0..k-1, every label used) of ``points (m, c)`` by k-means with
    k-means++ seeding from ``rng``."""
    m = points.shape[0]
    x = points.double()
    centres = [x[int(rng.integers(m))]]
    for _ in range(1, k):
        d2 = torch.stack([((x - c) ** 2).sum(1) for c in centres]).amin(0)
        p = (d2 / d2.sum()).numpy() if float(d2.sum()) > 0 else np.full(m, 1.0 / m)
        centres.append(x[int(rng.choice(m, p=p))])
    centre = torch.stack(centres)
    labels = torch.zeros(m, dtype=torch.long)
    for _ in range(iterations):
        labels = torch.cdist(x, centre).argmin(1)
        for j in range(k):  # an empty cluster takes the point farthest from its centre
            if not bool((labels == j).any()):
                far = int(((x - centre[labels]) ** 2).sum(1).argmax())
                labels[far] = j
        new = torch.stack([x[labels == j].mean(0) for j in range(k)])
        if torch.equal(new, centre):
            break
        centre = new
    return labels.numpy()


def cluster_maps(maps: torch.Tensor, k: int, rng: np.random.Generator) -> np.ndarray:
    """Labels ``(m,)`` of the maps ``(m, d, d, d)``: k-means on their first ``k - 1`` principal
    components."""
    m = maps.shape[0]
    if k == 1:
        return np.zeros(m, dtype=np.int64)
    x = maps.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)  # (m, m): cheap, m is small
    coords = u[:, : k - 1] * s[: k - 1]
    return kmeans(coords.cpu(), k, rng)
