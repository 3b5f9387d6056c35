"""numba CPU kernels for central slices: geometry, gather (extraction), scatter (insertion).

Same arithmetic as the torch code in :mod:`cryotorch.physics.slices` (which stays the reference
and the CUDA path), written as plain loops so that nothing is materialised twice and no atomic
adds are needed:

- :func:`geometry` computes the 8 trilinear neighbours of every point in one pass;
- :func:`gather` sums ``weight · table[index]`` per point (points split over threads);
- :func:`scatter` adds ``weight · values`` into the volume; each thread owns a contiguous range
  of voxels and walks all points, writing only its own voxels (no atomics, no private copies
  of the volume; the cost is reading the index array once per thread).

``scripts/bench_slices.py`` measures them against the torch kernels and torch-fourier-slice. All
arrays are numpy views of CPU tensors (no copies); ``index (n, 8)`` int64, ``weight (n, 8)``,
``table``/``values``/``out`` float32 or float64 C-contiguous.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

__all__ = ["gather", "geometry", "scatter"]


@njit(parallel=True, cache=True)
def _geometry(rotations, k, pad, p, index, weight, conjugate):  # pragma: no cover (JIT)
    b, m = rotations.shape[0], k.shape[0]
    px = p // 2 + 1
    half = p // 2
    for i in prange(b):
        a = rotations[i]
        for j in range(m):
            kx, ky = k[j, 0], k[j, 1]
            qx = pad * (kx * a[0, 0] + ky * a[1, 0])
            qy = pad * (kx * a[0, 1] + ky * a[1, 1])
            qz = pad * (kx * a[0, 2] + ky * a[1, 2])
            conj = qx < 0
            if conj:
                qx, qy, qz = -qx, -qy, -qz
            conjugate[i, j] = conj
            gx, gy, gz = qx, qy + half, qz + half
            x0, y0, z0 = math.floor(gx), math.floor(gy), math.floor(gz)
            fx, fy, fz = gx - x0, gy - y0, gz - z0
            for c in range(8):  # corner c = 4 dz + 2 dy + dx
                dx, dy, dz = c & 1, (c >> 1) & 1, c >> 2
                x, y, z = x0 + dx, y0 + dy, z0 + dz
                if 0 <= x < px and 0 <= y < p and 0 <= z < p:
                    wx = fx if dx else 1 - fx
                    wy = fy if dy else 1 - fy
                    wz = fz if dz else 1 - fz
                    index[i, j, c] = (z * p + y) * px + x
                    weight[i, j, c] = wz * wy * wx
                else:
                    index[i, j, c] = 0
                    weight[i, j, c] = 0


@njit(parallel=True, cache=True)
def _gather(table, index, weight, out):  # pragma: no cover (JIT)
    n, channels = out.shape
    for i in prange(n):
        for c in range(8):
            w = weight[i, c]
            if w != 0:
                row = table[index[i, c]]
                for ch in range(channels):
                    out[i, ch] += w * row[ch]


@njit(parallel=True, cache=True)
def _scatter(index, weight, values, out, n_parts):  # pragma: no cover (JIT)
    n_voxels, channels = out.shape
    n = index.shape[0]
    step = (n_voxels + n_parts - 1) // n_parts
    for part in prange(n_parts):
        lo, hi = part * step, min((part + 1) * step, n_voxels)
        for i in range(n):
            for c in range(8):
                v = index[i, c]
                if lo <= v < hi:
                    w = weight[i, c]
                    for ch in range(channels):
                        out[v, ch] += w * values[i, ch]


def _use_torch_threads() -> None:
    """Run numba's loops on as many threads as torch uses (``torch.set_num_threads``, or
    ``OMP_NUM_THREADS``), so that the two never oversubscribe the cores."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def geometry(
    rotations: np.ndarray, k: np.ndarray, pad: int, p: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rotations (b, 3, 3)``, used frequencies ``k (m, 2)`` -> index, weight ``(b, m, 8)``,
    conjugate ``(b, m)`` bool, for the padded grid of side ``p``."""
    b, m = rotations.shape[0], k.shape[0]
    index = np.empty((b, m, 8), dtype=np.int64)
    weight = np.empty((b, m, 8), dtype=rotations.dtype)
    conjugate = np.empty((b, m), dtype=np.bool_)
    _use_torch_threads()
    _geometry(rotations, k.astype(rotations.dtype), pad, p, index, weight, conjugate)
    return index, weight, conjugate


def gather(table: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``out[i] = Σ_c weight[i, c] · table[index[i, c]]``: ``(n, channels)`` from
    ``table (n_voxels, channels)``."""
    out = np.zeros((index.shape[0], table.shape[1]), dtype=table.dtype)
    _use_torch_threads()
    _gather(table, index, weight.astype(table.dtype, copy=False), out)
    return out


def scatter(index: np.ndarray, weight: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out[index[i, c]] += weight[i, c] · values[i]`` for all points ``i`` and corners ``c``."""
    _use_torch_threads()
    _scatter(index, weight.astype(values.dtype, copy=False), values, out, numba.get_num_threads())
