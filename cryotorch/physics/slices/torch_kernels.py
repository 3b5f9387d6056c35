"""The slice kernels in torch: extraction and insertion through the geometry's trilinear
neighbours (``index``, ``weight``, ``conjugate`` of :class:`SliceGeometry`).

This is the reference the other kernels are held to, the CUDA path, the autograd path (the
numba kernels hand tensors that need a gradient to it) and what ``compiled`` runs through
``torch.compile``.
"""

from __future__ import annotations

import torch

from cryotorch.physics.slices.geometry import SliceGeometry

__all__ = ["extract", "insert"]


def extract(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Central slices ``(b, k, d, d // 2 + 1)`` of the interleaved volumes ``table (n_voxels,
    2k)`` (see :func:`cryotorch.physics.slices.extract_central_slices`)."""
    b, m, _ = geometry.index.shape
    acc = table.new_zeros((b * m, table.shape[1]))
    for c in range(8):
        acc = acc + geometry.weight[..., c].reshape(-1, 1).to(table.dtype) * table.index_select(
            0, geometry.index[..., c].reshape(-1)
        )
    return _slices_from_points(acc, geometry)


def _slices_from_points(acc: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Interpolated values ``(b * m, 2k)`` at the slice points -> ``(b, k, d, d // 2 + 1)``."""
    b, m = geometry.conjugate.shape
    k = acc.shape[1] // 2
    acc = acc.reshape(b, m, k, 2)
    sign = torch.where(geometry.conjugate, -1.0, 1.0).to(acc.dtype)[..., None]
    values = torch.complex(acc[..., 0], acc[..., 1] * sign)  # (b, m, k)
    d = geometry.d
    out = values.new_zeros((b, k, d * (d // 2 + 1)))
    out = out.index_copy(2, geometry.pixels, values.transpose(1, 2))
    return out.reshape(b, k, d, d // 2 + 1)


def insert(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None,
    out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Data sums ``(n_voxels, 2k)`` and weight sums ``(n_voxels, k)`` (or None) of ``slices``
    (see :func:`cryotorch.physics.slices.insert_central_slices` for the arguments)."""
    slices, weights = _expand_factors(slices, weights, factors)
    values = _insertion_values(slices, geometry, weights)
    # One flat index_add per trilinear corner: on CPU a 1-D index_add is about twice as fast as
    # a 2-D one over the same numbers (scripts/bench_slices.py).
    channels = values.shape[1]
    column = torch.arange(channels, device=values.device)
    sums = values.new_zeros(n_voxels * channels)
    for c in range(8):
        flat_index = (geometry.index[..., c].reshape(-1, 1) * channels + column).reshape(-1)
        w = geometry.weight[..., c].reshape(-1, 1).to(values.dtype)
        sums.index_add_(0, flat_index, (w * values).reshape(-1))
    split = _split_sums(sums.reshape(n_voxels, channels), slices.shape[1], weights is not None)
    return _add_into(out, split)


def _expand_factors(
    slices: torch.Tensor,
    weights: torch.Tensor | None,
    factors: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One image per particle and per-class ``factors`` -> the per-class slices and weights."""
    if factors is None:
        return slices, weights
    data_factors, weight_factors = (f.to(slices.real.dtype)[:, :, None, None] for f in factors)
    return slices * data_factors, (weights * weight_factors if weights is not None else None)


def _add_into(
    out: tuple[torch.Tensor, torch.Tensor | None] | None,
    sums: tuple[torch.Tensor, torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``sums`` added into ``out`` (returned), or ``sums`` themselves without ``out``."""
    if out is None:
        return sums
    for total, part in zip(out, sums, strict=True):
        if part is not None:
            assert total is not None  # out has weight sums where sums has them
            total += part
    return out


def _insertion_values(
    slices: torch.Tensor, geometry: SliceGeometry, weights: torch.Tensor | None
) -> torch.Tensor:
    """The values to add at the slice points: ``(b * m, 2k)`` real (re, im per class), with
    the ``k`` weight channels appended if ``weights`` is given; conjugated where read at -q."""
    b, k = slices.shape[:2]
    m = geometry.pixels.numel()
    values = slices.reshape(b, k, -1).index_select(2, geometry.pixels).transpose(1, 2)  # (b, m, k)
    values = torch.where(geometry.conjugate[..., None], values.conj(), values)
    values = torch.view_as_real(values.resolve_conj()).reshape(b * m, 2 * k)
    if weights is not None:
        w_values = weights.reshape(b, k, -1).index_select(2, geometry.pixels).transpose(1, 2)
        values = torch.cat([values, w_values.reshape(b * m, k).to(values.dtype)], dim=1)
    return values


def _split_sums(
    sums: torch.Tensor, k: int, has_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(n_voxels, 2k [+ k])`` sums -> (data sums, weight sums or None), as views (no copy:
    at d = 128 the sums are hundreds of MB)."""
    return sums[:, : 2 * k], (sums[:, 2 * k :] if has_weights else None)
