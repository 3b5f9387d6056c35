"""Central slices of K class volumes at once: extraction and its adjoint, insertion.

These are the two hot kernels of 3D classification. The K Fourier volumes (centred rfft_3d of
the ``pad``-times padded maps, see :mod:`cryotorch.physics.projector`) are stored *interleaved*,
``(n_voxels, 2K)`` real (real and imaginary parts of every class side by side), so that one
gather of a voxel serves all K classes.

A particle's 2D frequency ``k = (kx, ky)`` (box ``d``) samples the 3D transform at
``q = pad · Aᵀ (kx, ky, 0)`` (RELION's matrix ``A``, see :mod:`cryotorch.conventions`). Only
frequencies with ``|k| <= d / 2`` are used (RELION's ``r_max``); the others are zero. Points
with ``qx < 0`` are read at ``-q`` and conjugated (Friedel symmetry of the rfft half). Values
between voxels are trilinearly interpolated. :func:`insert_central_slices` is the exact
adjoint of :func:`extract_central_slices` for the real inner product
``<a, b> = Re Σ a conj(b)`` over the stored entries.

:func:`extract_central_slices_reference` does the same with ``grid_sample`` on the full
(non-Hermitian-folded) spectrum: slow, obviously correct, and the tests hold the fast path to it.

:func:`use_kernels` chooses how the kernels (extraction, insertion, and the trilinear
neighbours the torch code reads) run: by default on CPU through the numba loops of
:mod:`cryotorch.physics.numba_kernels` (5-15 times faster than the torch code: neighbours
computed on the fly, threads on radial shells of the volume, no atomic adds;
``scripts/bench_slices.py``), else (CUDA, or when autograd needs them) through the torch code
below, which is also the reference the tests hold the others to; ``compiled`` runs that torch
code through ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from cryotorch.physics import numba_kernels
from cryotorch.physics.fourier import frequency_grid_2d

__all__ = [
    "SliceGeometry",
    "deinterleave_classes",
    "extract_central_slices",
    "extract_central_slices_reference",
    "insert_central_slices",
    "insert_for_reconstruction",
    "interleave_classes",
    "slice_geometry",
    "sum_friedel_mates_on_x0_plane",
    "use_kernels",
]


def interleave_classes(volumes_ft: torch.Tensor) -> torch.Tensor:
    """``(k, p, p, p // 2 + 1)`` complex -> ``(p * p * (p // 2 + 1), 2k)`` real, voxel-major."""
    k = volumes_ft.shape[0]
    return torch.view_as_real(volumes_ft).permute(1, 2, 3, 0, 4).reshape(-1, 2 * k).contiguous()


def deinterleave_classes(table: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`interleave_classes`: ``(n_voxels, 2k)`` -> ``(k, p, p, p // 2 + 1)``."""
    k = table.shape[1] // 2
    vol = table.reshape(p, p, p // 2 + 1, k, 2).permute(3, 0, 1, 2, 4).contiguous()
    return torch.view_as_complex(vol)


@dataclass(frozen=True)
class SliceGeometry:
    """Where the frequencies of ``b`` slices fall in the ``pad``-times padded volume grid.

    ``rotations (b, 3, 3)`` (RELION ``A``); ``pixels (m,)``: flat rfft_2d positions of the used
    frequencies (``|k| <= d / 2``), sorted by ``|k|``; ``k (m, 2)``: their ``(kx, ky)``.
    The trilinear neighbours, which the torch kernels read (the numba kernels compute their own
    on the fly), are computed on first use: ``index (b, m, 8)``, flat voxel index of the 8
    neighbours; ``weight (b, m, 8)``; ``conjugate (b, m)``: read at ``-q`` (conjugate).
    """

    d: int
    pad: int
    rotations: torch.Tensor
    pixels: torch.Tensor
    k: torch.Tensor

    @cached_property
    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _KERNELS["neighbours"](self.rotations, self.k, self.d, self.pad)

    @property
    def index(self) -> torch.Tensor:
        return self._neighbours[0]

    @property
    def weight(self) -> torch.Tensor:
        return self._neighbours[1]

    @property
    def conjugate(self) -> torch.Tensor:
        return self._neighbours[2]


def slice_geometry(rotations: torch.Tensor, d: int, pad: int = 2) -> SliceGeometry:
    """The central slices of ``rotations (b, 3, 3)`` (RELION ``A``) for box ``d``, padding
    ``pad``; with their trilinear neighbours where the torch kernels will need them."""
    pixels, k = _used_frequencies(d, rotations)
    geometry = SliceGeometry(d, pad, rotations, pixels, k)
    if not (_KERNELS["insert"] is _insert_central_slices_numba and _numba_applies(rotations)):
        geometry.index  # noqa: B018 (computed now, e.g. in the batch-preparing thread)
    return geometry


def _used_frequencies(d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rfft_2d entries with ``|k| <= d / 2``, sorted by ``|k|`` (ties in rfft_2d order): flat
    positions ``(m,)`` and ``k (m, 2)`` (``kx, ky`` in Fourier pixels, ``like``'s dtype and
    device). The numba kernels cut this order into radial shells of the volume."""
    k = frequency_grid_2d(d, like.device).to(like.dtype).reshape(-1, 2)
    radius = k.norm(dim=-1)
    pixels = torch.nonzero(radius <= d / 2).flatten()
    pixels = pixels[torch.argsort(radius[pixels], stable=True)]
    return pixels, k[pixels]


def _trilinear_neighbours(
    rotations: torch.Tensor, k: torch.Tensor, d: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``index (b, m, 8)``, ``weight (b, m, 8)``, ``conjugate (b, m)`` of the points ``k (m, 2)``
    of the slices ``rotations (b, 3, 3)`` (see :class:`SliceGeometry`)."""
    p = pad * d
    px = p // 2 + 1
    # q = pad * A^T (kx, ky, 0): row j of A^T is column j of A.
    q = pad * (
        k[None, :, 0, None] * rotations[:, None, 0, :]
        + k[None, :, 1, None] * rotations[:, None, 1, :]
    )
    conjugate = q[..., 0] < 0
    q = torch.where(conjugate[..., None], -q, q)
    g = q + q.new_tensor([0.0, p // 2, p // 2])  # grid position (x, y, z)
    g0 = torch.floor(g)
    frac = g - g0
    g0 = g0.long()
    # Per axis, the weights and validity of the lower and upper neighbour: (b, m, 2) each.
    # x >= 0 always (the half grid holds kx >= 0); y and z must stay inside [0, p).
    lower_upper = torch.stack([g0, g0 + 1], dim=-1)  # (b, m, 3, 2)
    inside = lower_upper < torch.tensor([px, p, p], device=g0.device)[:, None]
    inside &= lower_upper >= 0
    w = torch.stack([1 - frac, frac], dim=-1) * inside  # (b, m, 3, 2)
    wx, wy, wz = w[..., 0, :], w[..., 1, :], w[..., 2, :]
    vx, vy, vz = inside[..., 0, :], inside[..., 1, :], inside[..., 2, :]
    b, m = g0.shape[:2]
    # Corner c = 4 dz + 2 dy + dx, as the (z, y, x) axes of the outer products below.
    weight = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(
        b, m, 8
    )
    valid = (vz[..., :, None, None] & vy[..., None, :, None] & vx[..., None, None, :]).reshape(
        b, m, 8
    )
    steps = torch.tensor([0, 1], device=g0.device)
    offsets = (
        (steps[:, None, None] * p + steps[None, :, None]) * px + steps[None, None, :]
    ).reshape(8)
    base = (g0[..., 2] * p + g0[..., 1]) * px + g0[..., 0]  # (b, m)
    index = torch.where(valid, base[..., None] + offsets, 0)
    return index, weight, conjugate


def extract_central_slices(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Central slices of the interleaved volumes ``table (n_voxels, 2k)``.

    Returns ``(b, k, d, d // 2 + 1)`` complex slices (rfft_2d layout), zero beyond ``|k| = d/2``.
    """
    return _KERNELS["extract"](table, geometry)


def _extract_central_slices(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
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


def insert_central_slices(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adjoint of :func:`extract_central_slices`: add ``slices (b, k, d, d // 2 + 1)`` into volumes.

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
    return _KERNELS["insert"](slices, geometry, n_voxels, weights, out, factors)


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


def _split_sums(sums: torch.Tensor, k: int, has_weights: bool):
    """``(n_voxels, 2k [+ k])`` sums -> (data sums, weight sums or None), as views (no copy:
    at d = 128 the sums are hundreds of MB)."""
    return sums[:, : 2 * k], (sums[:, 2 * k :] if has_weights else None)


def _insert_central_slices(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None,
    out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    sums = _split_sums(sums.reshape(n_voxels, channels), slices.shape[1], weights is not None)
    return _add_into(out, sums)


# The numba kernels (CPU tensors that need no gradient; anything else takes the torch code).


def _numba_applies(*tensors: torch.Tensor) -> bool:
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    return on_cpu and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _extract_central_slices_numba(table: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    if not _numba_applies(table, geometry.rotations):
        return _extract_central_slices(table, geometry)
    b, k, d = geometry.rotations.shape[0], table.shape[1] // 2, geometry.d
    out = torch.zeros(b, k, d * (d // 2 + 1), dtype=_COMPLEX[table.dtype])
    numba_kernels.gather(
        torch.view_as_real(out).numpy(),
        table.detach().contiguous().numpy(),
        *_numba_geometry(geometry, table.dtype),
    )
    return out.reshape(b, k, d, d // 2 + 1)


def _numba_geometry(geometry: SliceGeometry, dtype: torch.dtype) -> tuple:
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


def _insert_central_slices_numba(
    slices: torch.Tensor,
    geometry: SliceGeometry,
    n_voxels: int,
    weights: torch.Tensor | None,
    out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    b, n_images = slices.shape[:2]
    k = factors[0].shape[1] if factors is not None else n_images
    tensors = [slices, geometry.rotations] + ([weights] if weights is not None else [])
    tensors += list(factors) if factors is not None else []
    in_place = out is None or (
        _writable_by_numba(out[0], (n_voxels, 2 * k))
        and (weights is None or _writable_by_numba(out[1], (n_voxels, k)))
    )
    if not (_numba_applies(*tensors) and in_place):
        return _insert_central_slices(slices, geometry, n_voxels, weights, out, factors)
    real = slices.real.dtype
    if out is None:
        data = torch.zeros(n_voxels, 2 * k, dtype=real)
        weight = torch.zeros(n_voxels, k, dtype=real) if weights is not None else None
    else:
        data, weight = out
    images = slices.detach().resolve_conj().reshape(b, n_images, -1).contiguous()
    values = torch.view_as_real(images)
    numba_kernels.scatter(
        data.numpy(),
        weight.numpy() if weights is not None else None,
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


_TORCH_KERNELS = {
    "neighbours": _trilinear_neighbours,
    "extract": _extract_central_slices,
    "insert": _insert_central_slices,
}
_NUMBA_KERNELS = {
    **_TORCH_KERNELS,  # the neighbours, which only the torch fallback reads
    "extract": _extract_central_slices_numba,
    "insert": _insert_central_slices_numba,
}
KERNEL_CHOICES = ("numba", "torch", "compiled")
_KERNELS = dict(_NUMBA_KERNELS)


def use_kernels(name: str = "numba") -> None:
    """Choose the implementation of the slice kernels (extraction, insertion, neighbours).

    ``numba`` (the default): :mod:`cryotorch.physics.numba_kernels` for CPU tensors that need no
    gradient, the torch code for the rest (CUDA, autograd). ``torch``: the torch code always
    (the reference). ``compiled``: the torch code through ``torch.compile`` (compiled on first
    use for each shape; needs a C++ compiler on CPU, Triton on CUDA).
    """
    if name not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, not {name!r}")
    if name == "numba":
        _KERNELS.update(_NUMBA_KERNELS)
    elif name == "torch":
        _KERNELS.update(_TORCH_KERNELS)
    elif name == "compiled":
        _KERNELS.update({key: torch.compile(fn) for key, fn in _TORCH_KERNELS.items()})


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
    column stands for its absent mate too; so that column is inserted at half weight, and the
    mates the half volume cannot hold are added on its ``x = 0`` plane afterwards (as RELION's
    ``enforceHermitianSymmetry`` does). Same shapes, ``out`` and ``factors`` as
    :func:`insert_central_slices`.
    """
    half = torch.ones(slices.shape[-1], dtype=weights.dtype, device=weights.device)
    half[0] = 0.5
    return insert_central_slices(slices * half, geometry, n_voxels, weights * half, out, factors)


def sum_friedel_mates_on_x0_plane(volumes_ft: torch.Tensor) -> torch.Tensor:
    """Add to each entry of the ``x = 0`` plane of ``(..., p, p, p // 2 + 1)`` the conjugate of its
    mirror ``(-y, -z)``: the contributions that insertion at ``-q`` would have made there."""
    plane = volumes_ft[..., 0]
    mirror = torch.roll(plane.flip((-2, -1)), shifts=(1, 1), dims=(-2, -1))  # index i -> p - i
    mirror = mirror.conj() if mirror.is_complex() else mirror
    return torch.cat([(plane + mirror)[..., None], volumes_ft[..., 1:]], dim=-1)


def extract_central_slices_reference(
    volumes_ft_full: torch.Tensor, rotations: torch.Tensor, d: int, pad: int = 2
) -> torch.Tensor:
    """Reference extraction with ``grid_sample`` on full centred spectra.

    ``volumes_ft_full (k, p, p, p)`` complex is ``fftshift(fftn(ifftshift(padded maps)))``,
    indexed ``[kz + p//2, ky + p//2, kx + p//2]``. Returns ``(b, k, d, d // 2 + 1)`` like
    :func:`extract_central_slices`.
    """
    k, p = volumes_ft_full.shape[0], volumes_ft_full.shape[-1]
    grid2 = frequency_grid_2d(d, rotations.device).to(rotations.dtype)  # (d, dh, 2)
    inside = grid2.norm(dim=-1) <= d / 2
    q = pad * (
        grid2[None, ..., 0, None] * rotations[:, None, None, 0, :]
        + grid2[None, ..., 1, None] * rotations[:, None, None, 1, :]
    )
    normalised = (q + p // 2) * 2 / (p - 1) - 1  # align_corners=True: index i -> -1 + 2i/(p-1)
    channels = torch.view_as_real(volumes_ft_full).permute(0, 4, 1, 2, 3).reshape(1, 2 * k, p, p, p)
    b = rotations.shape[0]
    sampled = F.grid_sample(
        channels.expand(b, -1, -1, -1, -1),
        normalised[:, None].to(channels.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # (b, 2k, 1, d, dh)
    sampled = sampled[:, :, 0].reshape(b, k, 2, d, d // 2 + 1)
    out = torch.complex(sampled[:, :, 0], sampled[:, :, 1])
    return out * inside
