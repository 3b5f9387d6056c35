"""numba CPU kernels for central slices: extraction (gather) and insertion (scatter).

Same arithmetic as the torch code in :mod:`cryotorch.physics.slices.torch_kernels` (the
reference and the CUDA path), written as plain loops that compute each point's trilinear
neighbours on the fly, so that no index or weight arrays are written and read back, and no atomic
adds are needed:

- the points (the used frequencies ``k``, sorted by ``|k|``) are split over the threads in
  contiguous runs, so each thread works on a spherical shell of the volume, which stays in cache
  while all the slices of the batch pass through it;
- :func:`gather` sums ``weight · table[voxel]`` over the 8 neighbours of every point;
- :func:`scatter` adds ``weight · value`` into the 8 neighbours. The points are cut into radial
  bands wider than a trilinear footprint (``2√3`` voxels), so bands ``n`` and ``n + 2`` never
  touch the same voxel: the even bands run in parallel, then the odd ones. No thread writes a
  voxel another thread is writing, the order of the additions to each voxel does not depend on
  the number of threads, and the sums go straight into the caller's accumulators.

A point on the boundary of the grid takes the slow path that checks every neighbour; all the
others read or write the 4 pairs of x-neighbours in a row, with a third path for one class that
keeps the real and imaginary sums in scalars instead of looping over channels (at d = 128 with
K = 1, 2026-11-30: extraction 5.1-5.6k -> 6.5-6.7k class-slices/s, insertion 2.0-3.1k ->
3.7-3.9k). Both kernels spell these paths out rather than share a helper that fills 8 rows and
weights: that helper cost a quarter to a third of the d = 128 extraction rate (measured
2026-11-29). ``scripts/bench_slices.py`` measures the kernels against the torch code and
torch-fourier-slice. All arrays are numpy views of CPU tensors (no copies); the torch-facing
wrappers, which fall back to the torch code where these loops do not apply, are in
:mod:`cryotorch.physics.slices.kernels`.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

__all__ = ["gather", "scatter"]


@njit(inline="always", cache=True)
def _grid_point(
    rotation: np.ndarray, kx: float, ky: float, pad: int, half: int
) -> tuple[int, int, int, float, float, float, float]:  # pragma: no cover (JIT)
    """``q = pad · Aᵀ (kx, ky, 0)``, folded to ``qx >= 0``: lower corner ``(x0, y0, z0)`` on the
    grid, fractions ``(fx, fy, fz)``, and ``-1`` where the point was read at ``-q``, else 1."""
    qx = pad * (kx * rotation[0, 0] + ky * rotation[1, 0])
    qy = pad * (kx * rotation[0, 1] + ky * rotation[1, 1])
    qz = pad * (kx * rotation[0, 2] + ky * rotation[1, 2])
    sign = 1.0
    if qx < 0:
        qx, qy, qz, sign = -qx, -qy, -qz, -1.0
    gy, gz = qy + half, qz + half
    x0, y0, z0 = math.floor(qx), math.floor(gy), math.floor(gz)
    return int(x0), int(y0), int(z0), qx - x0, gy - y0, gz - z0, sign


@njit(parallel=True, cache=True)
def _gather(
    rotations: np.ndarray,
    k: np.ndarray,
    pixels: np.ndarray,
    pad: int,
    p: int,
    table: np.ndarray,
    out: np.ndarray,
    starts: np.ndarray,
) -> None:  # pragma: no cover (JIT)
    n_channels = table.shape[1]
    n_classes = n_channels // 2
    px, half = p // 2 + 1, p // 2
    sz = p * px  # flat stride of z (that of y is px, of x 1)
    for t in prange(starts.shape[0] - 1):
        acc = np.empty(n_channels, dtype=table.dtype)
        for j in range(starts[t], starts[t + 1]):
            kx, ky, pixel = k[j, 0], k[j, 1], pixels[j]
            for i in range(rotations.shape[0]):
                x0, y0, z0, fx, fy, fz, sign = _grid_point(rotations[i], kx, ky, pad, half)
                acc[:] = 0
                inside = x0 + 1 < px and 0 <= y0 and y0 + 1 < p and 0 <= z0 and z0 + 1 < p
                if inside and n_classes == 1:  # one class: scalar sums, no channel loop
                    base = z0 * sz + y0 * px + x0
                    re = 0.0
                    im = 0.0
                    for dz in range(2):
                        wz = fz if dz else 1 - fz
                        for dy in range(2):
                            wzy = wz * (fy if dy else 1 - fy)
                            row = base + dz * sz + dy * px
                            w0, w1 = wzy * (1 - fx), wzy * fx
                            re += w0 * table[row, 0] + w1 * table[row + 1, 0]
                            im += w0 * table[row, 1] + w1 * table[row + 1, 1]
                    acc[0], acc[1] = re, im
                elif inside:
                    base = z0 * sz + y0 * px + x0
                    for dz in range(2):
                        wz = fz if dz else 1 - fz
                        for dy in range(2):
                            wzy = wz * (fy if dy else 1 - fy)
                            row = base + dz * sz + dy * px
                            w0, w1 = wzy * (1 - fx), wzy * fx
                            for c in range(n_channels):
                                acc[c] += w0 * table[row, c] + w1 * table[row + 1, c]
                else:
                    for corner in range(8):
                        dx, dy, dz = corner & 1, (corner >> 1) & 1, corner >> 2
                        x, y, z = x0 + dx, y0 + dy, z0 + dz
                        if x < px and 0 <= y < p and 0 <= z < p:
                            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                            w *= fz if dz else 1 - fz
                            row = z * sz + y * px + x
                            for c in range(n_channels):
                                acc[c] += w * table[row, c]
                for c in range(n_classes):
                    out[i, c, pixel, 0] = acc[2 * c]
                    out[i, c, pixel, 1] = sign * acc[2 * c + 1]


@njit(parallel=True, cache=True)
def _scatter(
    rotations: np.ndarray,
    k: np.ndarray,
    pixels: np.ndarray,
    pad: int,
    p: int,
    slices: np.ndarray,
    weights: np.ndarray,
    has_weights: bool,
    factors: np.ndarray,
    has_factors: bool,
    data: np.ndarray,
    weight: np.ndarray,
    bands: np.ndarray,
    work: np.ndarray,
    n_work: np.ndarray,
) -> None:  # pragma: no cover (JIT)
    n_classes = data.shape[1] // 2
    last_source = slices.shape[1] - 1  # 0: one image for all the classes, else n_classes - 1
    n_channels = 2 * n_classes
    px, half = p // 2 + 1, p // 2
    sz = p * px
    for phase in range(2):
        for t in prange(work.shape[1]):
            v = np.empty(n_channels, dtype=data.dtype)
            vw = np.zeros(n_classes, dtype=weight.dtype)
            for n in range(n_work[phase, t]):
                band = work[phase, t, n]
                for j in range(bands[band], bands[band + 1]):
                    kx, ky, pixel = k[j, 0], k[j, 1], pixels[j]
                    for i in range(rotations.shape[0]):
                        x0, y0, z0, fx, fy, fz, sign = _grid_point(rotations[i], kx, ky, pad, half)
                        for c in range(n_classes):
                            source = min(c, last_source)
                            f = factors[i, c] if has_factors else 1.0
                            v[2 * c] = f * slices[i, source, pixel, 0]
                            v[2 * c + 1] = f * sign * slices[i, source, pixel, 1]
                            if has_weights:
                                g = factors[i, n_classes + c] if has_factors else 1.0
                                vw[c] = g * weights[i, source, pixel]
                        inside = x0 + 1 < px and 0 <= y0 and y0 + 1 < p and 0 <= z0 and z0 + 1 < p
                        if inside and n_classes == 1:  # one class: no channel loops
                            base = z0 * sz + y0 * px + x0
                            re, im, vw0 = v[0], v[1], vw[0]
                            for dz in range(2):
                                wz = fz if dz else 1 - fz
                                for dy in range(2):
                                    wzy = wz * (fy if dy else 1 - fy)
                                    row = base + dz * sz + dy * px
                                    w0, w1 = wzy * (1 - fx), wzy * fx
                                    data[row, 0] += w0 * re
                                    data[row, 1] += w0 * im
                                    data[row + 1, 0] += w1 * re
                                    data[row + 1, 1] += w1 * im
                                    if has_weights:
                                        weight[row, 0] += w0 * vw0
                                        weight[row + 1, 0] += w1 * vw0
                        elif inside:
                            base = z0 * sz + y0 * px + x0
                            for dz in range(2):
                                wz = fz if dz else 1 - fz
                                for dy in range(2):
                                    wzy = wz * (fy if dy else 1 - fy)
                                    row = base + dz * sz + dy * px
                                    w0, w1 = wzy * (1 - fx), wzy * fx
                                    for c in range(n_channels):
                                        data[row, c] += w0 * v[c]
                                        data[row + 1, c] += w1 * v[c]
                                    if has_weights:
                                        for c in range(n_classes):
                                            weight[row, c] += w0 * vw[c]
                                            weight[row + 1, c] += w1 * vw[c]
                        else:
                            for corner in range(8):
                                dx, dy, dz = corner & 1, (corner >> 1) & 1, corner >> 2
                                x, y, z = x0 + dx, y0 + dy, z0 + dz
                                if x < px and 0 <= y < p and 0 <= z < p:
                                    w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                                    w *= fz if dz else 1 - fz
                                    row = z * sz + y * px + x
                                    for c in range(n_channels):
                                        data[row, c] += w * v[c]
                                    if has_weights:
                                        for c in range(n_classes):
                                            weight[row, c] += w * vw[c]


def _threads() -> int:
    """numba's threads, set to as many as torch uses (``torch.set_num_threads``, or
    ``OMP_NUM_THREADS``), so that the two never oversubscribe the cores."""
    import torch

    # numba.config sets its attributes at import time (from the environment): mypy sees none.
    cores = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(torch.get_num_threads(), cores)))
    return numba.get_num_threads()


def _radii(k: np.ndarray) -> np.ndarray:
    radius = np.hypot(k[:, 0], k[:, 1])
    if np.any(np.diff(radius) < 0):
        raise ValueError(
            "the frequencies k must be sorted by |k| (slices.geometry.used_frequencies)"
        )
    return radius


def _bands(
    radius: np.ndarray, pad: int, n_threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radial bands of the sorted points and their assignment to threads, per phase.

    Band ``n`` holds ``n w <= |k| < (n + 1) w`` with ``pad · w > 2√3`` voxels, so that the
    trilinear footprints of bands ``n`` and ``n + 2`` are disjoint. Returns the band starts
    ``(n_bands + 1,)``, the band ids per phase and thread ``(2, n_threads, n_bands)`` and their
    counts ``(2, n_threads)``; each phase's bands go to the least loaded thread, largest first.
    """
    width = 2 * math.sqrt(3) / pad + 0.01
    band = np.floor(radius / width).astype(np.int64)
    n_bands = int(band[-1]) + 1 if len(band) else 0
    starts = np.searchsorted(band, np.arange(n_bands + 1)).astype(np.int64)
    counts = np.diff(starts)
    work = np.zeros((2, n_threads, max(n_bands, 1)), dtype=np.int64)
    n_work = np.zeros((2, n_threads), dtype=np.int64)
    for phase in range(2):
        load = np.zeros(n_threads)
        for b in sorted(range(phase, n_bands, 2), key=lambda b: -counts[b]):
            t = int(np.argmin(load))
            work[phase, t, n_work[phase, t]] = b
            n_work[phase, t] += 1
            load[t] += counts[b]
    return starts, work, n_work


def gather(
    out: np.ndarray,
    table: np.ndarray,
    rotations: np.ndarray,
    k: np.ndarray,
    pixels: np.ndarray,
    pad: int,
    p: int,
) -> None:
    """Write the central slices of ``table (n_voxels, 2 n_classes)`` (grid side ``p``) into
    ``out (b, n_classes, n_pixels, 2)`` (re, im; zeros expected at pixels not in ``pixels``),
    for ``rotations (b, 3, 3)`` and the used frequencies ``k (m, 2)``, sorted by ``|k|``, at
    rfft_2d positions ``pixels (m,)``."""
    n_threads = _threads()
    _radii(k)
    starts = np.linspace(0, len(k), n_threads + 1).astype(np.int64)
    _gather(rotations, k, pixels, pad, p, table, out, starts)


def scatter(
    data: np.ndarray,
    weight: np.ndarray | None,
    slices: np.ndarray,
    weights: np.ndarray | None,
    rotations: np.ndarray,
    k: np.ndarray,
    pixels: np.ndarray,
    pad: int,
    p: int,
    factors: np.ndarray | None = None,
) -> None:
    """Add ``slices (b, n_classes, n_pixels, 2)`` (re, im) into ``data (n_voxels, 2 n_classes)``
    and, if given, ``weights (b, n_classes, n_pixels)`` into ``weight (n_voxels, n_classes)``,
    with the trilinear weights of the adjoint of :func:`gather` (conjugated where read at
    ``-q``; the weights unconjugated).

    With ``factors (b, 2 n_classes)``, ``slices (b, 1, n_pixels, 2)`` and ``weights (b, 1,
    n_pixels)`` hold one image per particle, and class ``c`` adds ``factors[:, c]`` times the
    image and ``factors[:, n_classes + c]`` times its weights: each point's image value is read
    once for all the classes."""
    n_threads = _threads()
    bands, work, n_work = _bands(_radii(k), pad, n_threads)
    has_weights = weights is not None
    if weights is None:  # typed placeholders: numba compiles one version for both cases
        weights = np.zeros((1, 1, 1), dtype=slices.dtype)
        weight = np.zeros((1, 1), dtype=data.dtype)
    elif weight is None:
        raise ValueError("scatter: weights given without the array weight to add them into")
    has_factors = factors is not None
    if factors is None:
        factors = np.zeros((1, 1), dtype=data.dtype)
    geometry = (rotations, k, pixels, pad, p)
    _scatter(
        *geometry, slices, weights, has_weights, factors, has_factors, data, weight,
        bands, work, n_work,
    )  # fmt: skip
