"""Which code runs the slice kernels, and the entry points that dispatch on it.

A :class:`Kernels` names one implementation of the three kernels (the trilinear neighbours the
torch code reads, extraction, insertion). It is chosen per call, never process-wide:
:func:`slice_geometry` takes it (a name of :data:`KERNEL_CHOICES` or a :class:`Kernels`) and
the :class:`SliceGeometry` it returns carries it, so that :func:`extract_central_slices` and
:func:`insert_central_slices` on that geometry run those kernels (its cached neighbours are
theirs too). In the engine, :class:`cryotorch.engine.batches.BatchMaker` makes the geometries
with the ``kernels`` it was given (``cryotorch-classify kernels=...``).

- ``numba`` (the default): the loops of :mod:`cryotorch.physics.slices.numba_kernels` for CPU
  tensors that need no gradient (5-15 times faster than the torch code: neighbours computed on
  the fly, threads on radial shells of the volume, no atomic adds; ``scripts/bench_slices.py``),
  the torch code for the rest (CUDA, autograd);
- ``torch``: :mod:`cryotorch.physics.slices.torch_kernels` always (the reference);
- ``compiled``: that torch code through ``torch.compile`` (compiled on first use for each shape;
  needs a C++ compiler on CPU, Triton on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from cryotorch.physics.slices import numba_kernels, torch_kernels
from cryotorch.physics.slices.geometry import (
    SliceGeometry,
    half_weight_x0_column,
    trilinear_neighbours,
    used_frequencies,
)

__all__ = [
    "KERNEL_CHOICES",
    "Kernels",
    "as_kernels",
    "extract_central_slices",
    "insert_central_slices",
    "insert_for_reconstruction",
    "slice_geometry",
]

KERNEL_CHOICES = ("numba", "torch", "compiled")

Sums = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Kernels:
    """One implementation of the slice kernels.

    ``neighbours(rotations, k, d, pad)`` -> ``index, weight, conjugate`` (see
    :class:`SliceGeometry`); ``extract(table, geometry)`` and ``insert(slices, geometry,
    n_voxels, weights, out, factors)`` as :func:`extract_central_slices` and
    :func:`insert_central_slices`. ``on_the_fly``: extraction and insertion compute their own
    neighbours where :func:`numba_applies` (the geometry's are then not made in advance).
    """

    name: str
    neighbours: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    extract: Callable[[torch.Tensor, SliceGeometry], torch.Tensor]
    insert: Callable[..., Sums]
    on_the_fly: bool = False

    def reads_neighbours(self, *tensors: torch.Tensor) -> bool:
        """Whether these kernels, given ``tensors``, read the geometry's trilinear neighbours."""
        return not (self.on_the_fly and numba_applies(*tensors))


# The numba kernels on torch tensors (CPU tensors that need no gradient; anything else takes
# the torch code).


def numba_applies(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on the CPU and none needs a gradient."""
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    return on_cpu and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _extract_numba(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    if not numba_applies(table, geometry.rotations):
        return torch_kernels.extract(table, geometry)
    b, k, d = geometry.rotations.shape[0], table.shape[1] // 2, geometry.d
    out = torch.zeros(b, k, d * (d // 2 + 1), dtype=_COMPLEX[table.dtype])
    numba_kernels.gather(
        torch.view_as_real(out).numpy(),
        table.detach().contiguous().numpy(),
        *_numba_geometry(geometry, table.dtype),
    )
    return out.reshape(b, k, d, d // 2 + 1)


def _numba_geometry(
    geometry: SliceGeometry, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The geometry arguments of the numba kernels: rotations, k, pixels, pad, p."""
    return (
        geometry.rotations.detach().to(dtype).contiguous().numpy(),
        geometry.k.to(dtype).contiguous().numpy(),
        geometry.pixels.numpy(),
        geometry.pad,
        geometry.pad * geometry.d,
    )


def _writable_by_numba(t: torch.Tensor, shape: tuple[int, ...]) -> bool:
    return t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad and t.shape == shape


def _insert_numba(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None,
    out: Sums | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Sums:
    b, n_images = slices.shape[:2]
    k = factors[0].shape[1] if factors is not None else n_images
    tensors = [slices, geometry.rotations] + ([weights] if weights is not None else [])
    tensors += list(factors) if factors is not None else []
    in_place = out is None or (
        _writable_by_numba(out[0], (n_voxels, 2 * k))
        and (weights is None or (out[1] is not None and _writable_by_numba(out[1], (n_voxels, k))))
    )
    if not (numba_applies(*tensors) and in_place):
        return torch_kernels.insert(slices, geometry, n_voxels, weights, out, factors)
    real = slices.real.dtype
    if out is None:
        data = torch.zeros(n_voxels, 2 * k, dtype=real)
        weight = torch.zeros(n_voxels, k, dtype=real) if weights is not None else None
    else:
        data, weight = out
        if weights is None:
            weight = None  # no weights: none added, and none returned
    images = slices.detach().resolve_conj().reshape(b, n_images, -1).contiguous()
    values = torch.view_as_real(images)
    numba_kernels.scatter(
        data.numpy(),
        weight.numpy() if weight is not None else None,
        values.numpy(),
        weights.detach().reshape(b, n_images, -1).to(real).contiguous().numpy()
        if weights is not None
        else None,
        *_numba_geometry(geometry, real),
        factors=torch.cat(factors, dim=1).detach().to(real).contiguous().numpy()
        if factors is not None
        else None,
    )
    return data, (weight if weights is not None else None)


TORCH = Kernels("torch", trilinear_neighbours, torch_kernels.extract, torch_kernels.insert)
# The neighbours are the torch code's: only the torch fallback reads them.
NUMBA = Kernels("numba", trilinear_neighbours, _extract_numba, _insert_numba, on_the_fly=True)


@cache
def _compiled() -> Kernels:
    """The torch kernels through ``torch.compile`` (wrapped once; compiled on first call)."""
    return Kernels(
        "compiled",
        torch.compile(trilinear_neighbours),
        torch.compile(torch_kernels.extract),
        torch.compile(torch_kernels.insert),
    )


def as_kernels(kernels: str | Kernels) -> Kernels:
    """The :class:`Kernels` named ``kernels`` (one of :data:`KERNEL_CHOICES`), or ``kernels``
    itself; a ValueError for any other name."""
    if isinstance(kernels, Kernels):
        return kernels
    if kernels == "numba":
        return NUMBA
    if kernels == "torch":
        return TORCH
    if kernels == "compiled":
        return _compiled()
    raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, not {kernels!r}")


def slice_geometry(
    rotations: torch.Tensor, d: int, pad: int = 2, kernels: str | Kernels = "numba"
) -> SliceGeometry:
    """The central slices of ``rotations (b, 3, 3)`` (RELION ``A``) for box ``d``, padding
    ``pad``, to be extracted and inserted by ``kernels`` (see the module); with their trilinear
    neighbours where those kernels will need them (computed now, e.g. in the thread preparing
    the batch)."""
    kernels = as_kernels(kernels)
    pixels, k = used_frequencies(d, rotations)
    geometry = SliceGeometry(d, pad, rotations, pixels, k, kernels)
    if kernels.reads_neighbours(rotations):
        geometry.index  # noqa: B018 (computed now)
    return geometry


def extract_central_slices(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Central slices of the interleaved volumes ``table (n_voxels, 2k)``, by the geometry's
    kernels.

    Returns ``(b, k, d, d // 2 + 1)`` complex slices (rfft_2d layout), zero beyond ``|k| = d/2``.
    """
    return geometry.kernels.extract(table, geometry)


def insert_central_slices(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None = None,
    out: Sums | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Sums:
    """Adjoint of :func:`extract_central_slices`: add ``slices (b, k, d, d // 2 + 1)`` into volumes
    (by the geometry's kernels).

    Returns the interleaved data sums ``(n_voxels, 2k)`` and, if ``weights (b, k, d, d // 2 + 1)``
    (real, e.g. posterior · CTF² / σ²) are given, their sums ``(n_voxels, k)`` inserted with the
    same trilinear weights (Friedel mates add to the same voxel, unconjugated). With ``out``
    (data and weight sums of those shapes), the sums are added into it, in place, and it is
    returned: no new volumes are made (at d = 128 they are hundreds of MB).

    With ``factors`` (``(b, k)`` for the data and ``(b, k)`` for the weights), ``slices`` and
    ``weights`` are ``(b, 1, d, d // 2 + 1)``, one image per particle, and class ``c`` gets
    ``factors[0][:, c]`` times the image and ``factors[1][:, c]`` times its weights: the sums of
    the expanded slices, without making them (the M-step's images differ between the classes
    only by the posterior, so the numba kernel reads each image value once for all K).
    """
    if out is not None and weights is not None and out[1] is None:
        raise ValueError("out has no weight sums to add the weights into")
    if factors is not None and (slices.shape[1] != 1 or len(factors) != 2):
        raise ValueError("with factors, slices must be (b, 1, d, d // 2 + 1): one image each")
    return geometry.kernels.insert(slices, geometry, n_voxels, weights, out, factors)


def insert_for_reconstruction(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insertion whose sums, after :func:`sum_friedel_mates_on_x0_plane`, equal full-spectrum sums.

    The rfft_2d column ``kx = 0`` holds both members of each Friedel pair, while every other
    column stands for its absent mate too; so that column is inserted at half weight
    (:func:`half_weight_x0_column`), and the mates the half volume cannot hold are added on its
    ``x = 0`` plane afterwards (as RELION's ``enforceHermitianSymmetry`` does). Same shapes,
    ``out`` and ``factors`` as :func:`insert_central_slices`.
    """
    slices, weights = half_weight_x0_column(slices, weights)
    data, weight = insert_central_slices(slices, geometry, n_voxels, weights, out, factors)
    assert weight is not None  # weights were given, so their sums are returned
    return data, weight
