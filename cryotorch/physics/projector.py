"""Maps <-> padded Fourier volumes: gridding correction, projection and reconstruction.

Trilinear interpolation of a Fourier volume padded ``pad`` times (box ``p = pad · d``)
multiplies the real-space map by ``sinc²(x / p) sinc²(y / p) sinc²(z / p)`` (``x`` in pixels
from the centre): the Fourier transform of the trilinear kernel. Projection therefore divides
the map by it before padding (``gridding correction``), and reconstruction divides the result
by it after the inverse transform, as RELION does.
"""

from __future__ import annotations

import torch

from cryotorch.physics.fourier import frequency_grid_3d, irfft_2d, irfft_3d, rfft_3d
from cryotorch.physics.masks import soft_sphere
from cryotorch.physics.slices import (
    Kernels,
    SliceGeometry,
    deinterleave_classes,
    extract_central_slices,
    interleave_classes,
    slice_geometry,
    sum_friedel_mates_on_x0_plane,
)

__all__ = [
    "gridding_kernel",
    "pad_volume",
    "prepare_volumes",
    "project",
    "reconstruct_from_sums",
    "unpad_volume",
]


def gridding_kernel(
    d: int,
    pad: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(d, d, d)``: the real-space weight ``Π sinc²(x_i / (pad d))`` that trilinear
    interpolation on the padded grid imposes (``sinc t = sin πt / πt``)."""
    x = (torch.arange(d, device=device, dtype=dtype) - d // 2) / (pad * d)
    s = torch.sinc(x) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def pad_volume(volumes: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad ``(..., d, d, d)`` about the centre to ``(..., pad d, pad d, pad d)``."""
    d = volumes.shape[-1]
    p = pad * d
    lo = p // 2 - d // 2
    out = volumes.new_zeros((*volumes.shape[:-3], p, p, p))
    out[..., lo : lo + d, lo : lo + d, lo : lo + d] = volumes
    return out


def unpad_volume(volumes: torch.Tensor, d: int) -> torch.Tensor:
    """The central ``(..., d, d, d)`` of padded volumes (inverse of :func:`pad_volume`)."""
    p = volumes.shape[-1]
    lo = p // 2 - d // 2
    return volumes[..., lo : lo + d, lo : lo + d, lo : lo + d]


def prepare_volumes(maps: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Real maps ``(k, d, d, d)`` -> interleaved padded Fourier volumes ``(n_voxels, 2k)``.

    Gridding-corrected, zero-padded to ``pad · d``, centred rfft_3d, classes interleaved.
    """
    d = maps.shape[-1]
    corrected = maps / gridding_kernel(d, pad, maps.device, maps.dtype)
    return interleave_classes(rfft_3d(pad_volume(corrected, pad)))


def project(
    maps: torch.Tensor,
    rotations: torch.Tensor,
    pad: int = 2,
    geometry: SliceGeometry | None = None,
    kernels: str | Kernels = "numba",
) -> torch.Tensor:
    """Projections of maps ``(k, d, d, d)`` at ``rotations (b, 3, 3)`` -> ``(b, k, d, d)`` images.

    The line integral along z of the map rotated by ``A`` (RELION convention), in the units of
    the map times pixels. No CTF, no shift (apply them to the rfft of the slices). The slices
    are extracted by ``kernels`` (see :mod:`cryotorch.physics.slices.kernels`), or by those of
    ``geometry`` where it is given.
    """
    d = maps.shape[-1]
    geometry = geometry or slice_geometry(rotations, d, pad, kernels)
    return irfft_2d(extract_central_slices(prepare_volumes(maps, pad), geometry), d)


def reconstruct_from_sums(
    data: torch.Tensor,
    weight: torch.Tensor,
    d: int,
    pad: int = 2,
    regularisation: torch.Tensor | float = 0.0,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Maps ``(k, d, d, d)`` from the sums of ``slices.insert_for_reconstruction``.

    ``data (n_voxels, 2k)``, ``weight (n_voxels, k)``. Steps: the Friedel mates of the ``x = 0``
    plane are added; ``V = data / (weight + regularisation)`` per Fourier voxel
    (``regularisation`` broadcasts against ``(k, p, p, p // 2 + 1)``, e.g. ``1 / (T τ²)`` per
    shell), zero where the denominator is below ``eps`` times its largest value in the same
    resolution shell (per shell, not over the volume: where the noise power falls by orders of
    magnitude from low to high resolution, as in noise-free data, the high shells' weights
    would otherwise outweigh, and zero, every voxel of the low shells); the inverse
    transform and the central ``d`` box; outside the radius ``d / 2`` a soft edge (3 pixels)
    to the mean beyond it, as RELION does, since the box corners hold only interpolation
    artefacts; and the gridding correction.
    """
    p = pad * d
    k = weight.shape[1]
    numerator = sum_friedel_mates_on_x0_plane(deinterleave_classes(data, p))
    denominator = (
        sum_friedel_mates_on_x0_plane(weight.T.reshape(k, p, p, p // 2 + 1)) + regularisation
    )
    valid = denominator > eps * _shell_maxima(denominator, d, pad)
    volume_ft = torch.where(valid, numerator / torch.where(valid, denominator, 1.0), 0)
    maps = unpad_volume(irfft_3d(volume_ft, p), d)
    edge = 1 - soft_sphere(d, d / 2, 3.0, device=maps.device).to(maps.dtype)
    outside = (maps * edge).sum(dim=(-3, -2, -1), keepdim=True) / edge.sum()
    maps = maps * (1 - edge) + outside * edge
    return maps / gridding_kernel(d, pad, maps.device, maps.dtype)


def _shell_maxima(volumes: torch.Tensor, d: int, pad: int) -> torch.Tensor:
    """``(k, p, p, p // 2 + 1)``: at each voxel of the padded half spectra ``volumes``, the
    largest value of its class in its resolution shell (of the box-``d`` grid; the corners
    past Nyquist count in the last shell); at least the smallest positive float."""
    k, p = volumes.shape[0], pad * d
    radius = frequency_grid_3d(p, volumes.device).norm(dim=-1) / pad
    shells = radius.round().long().clamp_max(d // 2).flatten().expand(k, -1)
    flat = volumes.flatten(1)
    maxima = flat.new_zeros(k, d // 2 + 1).scatter_reduce(
        1, shells, flat, reduce="amax", include_self=False
    )
    tiny = torch.finfo(volumes.dtype).tiny
    return maxima.gather(1, shells).clamp_min(tiny).view_as(volumes)
