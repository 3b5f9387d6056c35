"""Test objects for the physics tests: Gaussian blobs with analytic projections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryotorch import conventions as cv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def blob_volume(
    d: int, centre_xyz, sigma: float, dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """``(d, d, d)`` Gaussian of unit peak at ``centre_xyz`` pixels from the box centre."""
    c = torch.arange(d, dtype=dtype, device=device) - d // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    cx, cy, cz = centre_xyz
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def blob_projection(
    d: int, centre_xy, sigma: float, dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """The line integral along z of :func:`blob_volume` centred at ``centre_xy``: ``(d, d)``."""
    c = torch.arange(d, dtype=dtype, device=device) - d // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    cx, cy = float(centre_xy[0]), float(centre_xy[1])
    return (
        math.sqrt(2 * math.pi)
        * sigma
        * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    )


def random_rotations(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``(n, 3, 3)`` RELION matrices from uniformly random rotations."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return torch.as_tensor(cv.rotvec_to_matrix(_quat_to_rotvec(q)), dtype=dtype)


def _quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    q = q * np.sign(q[:, :1] + 1e-300)
    angle = 2 * np.arctan2(np.linalg.norm(q[:, 1:], axis=1), q[:, 0])
    axis = q[:, 1:] / np.maximum(np.linalg.norm(q[:, 1:], axis=1, keepdims=True), 1e-300)
    return axis * angle[:, None]
