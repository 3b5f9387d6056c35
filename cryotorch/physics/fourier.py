"""The one Fourier convention of cryotorch: centred rfft of images and volumes.

Real space: an image ``(..., d, d)`` is indexed ``[y, x]`` and a volume ``(..., d, d, d)``
``[z, y, x]``; the centre (rotation centre, origin of shifts) is the pixel ``d // 2`` on every
axis.

Fourier space: ``rfft_2d(image)`` is ``rfft2`` of the image with its centre moved to index 0
(``ifftshift``), then ``fftshift`` on the full axis: shape ``(..., d, d // 2 + 1)``, indexed
``[ky + d // 2, kx]`` with ``kx = 0 .. d // 2`` and ``ky = -d // 2 .. (d - 1) // 2`` in Fourier
pixels (cycles per box). ``rfft_3d`` is the same with ``[kz + d // 2, ky + d // 2, kx]``. With
the centre at index 0, a centred object has a smooth transform, and the transform of a
symmetric object is real. No normalisation on the forward transform (torch's default).

A frequency in Fourier pixels ``k`` is ``k / (d * pixel_size)`` in 1/Å.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cropped_box_for_resolution",
    "fourier_crop_2d",
    "fourier_crop_3d",
    "fourier_pad_2d",
    "frequency_grid_2d",
    "frequency_grid_3d",
    "irfft_2d",
    "irfft_3d",
    "rfft_2d",
    "rfft_3d",
]


def rfft_2d(images: torch.Tensor) -> torch.Tensor:
    """Centred rfft of real images ``(..., d, d)`` -> ``(..., d, d // 2 + 1)`` complex."""
    f = torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    return torch.fft.fftshift(f, dim=-2)


def irfft_2d(spectra: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of :func:`rfft_2d`: ``(..., d, d // 2 + 1)`` -> real ``(..., d, d)``."""
    f = torch.fft.ifftshift(spectra, dim=-2)
    return torch.fft.fftshift(torch.fft.irfft2(f, s=(d, d)), dim=(-2, -1))


def rfft_3d(volumes: torch.Tensor) -> torch.Tensor:
    """Centred rfft of real volumes ``(..., d, d, d)`` -> ``(..., d, d, d // 2 + 1)`` complex."""
    f = torch.fft.rfftn(torch.fft.ifftshift(volumes, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    return torch.fft.fftshift(f, dim=(-3, -2))


def irfft_3d(spectra: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of :func:`rfft_3d`: ``(..., d, d, d // 2 + 1)`` -> real ``(..., d, d, d)``."""
    f = torch.fft.ifftshift(spectra, dim=(-3, -2))
    return torch.fft.fftshift(torch.fft.irfftn(f, s=(d, d, d), dim=(-3, -2, -1)), dim=(-3, -2, -1))


def frequency_grid_2d(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d, d // 2 + 1, 2)`` float32: ``(kx, ky)`` in Fourier pixels of each rfft_2d entry."""
    ky = torch.arange(d, device=device, dtype=torch.float32) - d // 2
    kx = torch.arange(d // 2 + 1, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def frequency_grid_3d(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d, d, d // 2 + 1, 3)`` float32: ``(kx, ky, kz)`` in Fourier pixels, per rfft_3d entry."""
    k = torch.arange(d, device=device, dtype=torch.float32) - d // 2
    kx = torch.arange(d // 2 + 1, device=device, dtype=torch.float32)
    gz, gy, gx = torch.meshgrid(k, k, kx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def fourier_crop_2d(spectra: torch.Tensor, d_out: int) -> torch.Tensor:
    """Keep the ``(d_out, d_out // 2 + 1)`` lowest frequencies of ``(..., d, d // 2 + 1)`` spectra.

    Cropping a box-``d`` image with pixel size ``p`` to ``d_out`` gives pixel size
    ``p * d / d_out`` (Nyquist ``2 p d / d_out`` Å). The result is scaled by ``(d_out / d)²`` so
    that ``irfft_2d`` of it has the real-space values of the downsampled image.
    """
    d = spectra.shape[-2]
    if d_out > d:
        raise ValueError(f"cannot crop a box of {d} to {d_out}")
    start = d // 2 - d_out // 2
    cropped = spectra[..., start : start + d_out, : d_out // 2 + 1]
    return cropped * (d_out / d) ** 2


def cropped_rfft_2d(images: torch.Tensor, d_out: int) -> torch.Tensor:
    """``fourier_crop_2d(rfft_2d(images), d_out)`` for real ``(..., d, d)`` images, cheaper.

    For even ``d`` the real-space ``ifftshift`` is a sign ``(-1)^(kx + ky)`` on the transform and
    the centring ``fftshift`` a choice of rows, both applied to the kept ``d_out`` rows only (the
    two shifts over the whole box cost as much as the FFT itself).
    """
    d = images.shape[-1]
    if d % 2 or d_out > d:
        return fourier_crop_2d(rfft_2d(images), d_out)
    ky = torch.arange(d_out, device=images.device) - d_out // 2  # centred order
    kx = torch.arange(d_out // 2 + 1, device=images.device)
    f = torch.fft.rfft2(images)[..., ky % d, : d_out // 2 + 1]
    sign = (1 - 2 * ((ky[:, None] + kx[None, :]) % 2)).to(f.real.dtype)
    return f * (sign * (d_out / d) ** 2)


def fourier_crop_3d(volumes: torch.Tensor, d_out: int) -> torch.Tensor:
    """Downsample real volumes ``(..., d, d, d)`` to ``(..., d_out, d_out, d_out)`` by keeping
    their lowest frequencies (pixel size ``p * d / d_out``); real-space values are kept, as in
    :func:`fourier_crop_2d`."""
    d = volumes.shape[-1]
    if d_out > d:
        raise ValueError(f"cannot crop a box of {d} to {d_out}")
    if d_out == d:
        return volumes
    start = d // 2 - d_out // 2
    f = rfft_3d(volumes)[..., start : start + d_out, start : start + d_out, : d_out // 2 + 1]
    return irfft_3d(f * (d_out / d) ** 3, d_out)


def fourier_pad_3d(volumes: torch.Tensor, d_out: int) -> torch.Tensor:
    """Upsample real volumes ``(..., d, d, d)`` to ``(..., d_out, d_out, d_out)`` (pixel size
    ``p * d / d_out``) by zero-padding their spectra: the map at the finer sampling, with no
    frequency beyond the small box's Nyquist; real-space values are kept, as in
    :func:`fourier_crop_3d`. The small box's Nyquist planes (an even ``d``) are left out:
    their partners at ``+d / 2`` are not in it, so they cannot be placed Hermitian-symmetric
    in the larger box. :func:`fourier_crop_3d` back to ``d`` gives the volume without them."""
    d = volumes.shape[-1]
    if d_out < d:
        raise ValueError(f"cannot pad a box of {d} to {d_out}")
    if d_out == d:
        return volumes
    f = rfft_3d(volumes)
    if d % 2 == 0:
        f = f.clone()
        f[..., 0, :, :] = 0  # z = -d/2
        f[..., :, 0, :] = 0  # y = -d/2
        f[..., :, :, d // 2] = 0  # x = d/2
    out = f.new_zeros((*f.shape[:-3], d_out, d_out, d_out // 2 + 1))
    start = d_out // 2 - d // 2
    out[..., start : start + d, start : start + d, : d // 2 + 1] = f
    return irfft_3d(out * (d_out / d) ** 3, d_out)


def fourier_pad_2d(spectra: torch.Tensor, d_out: int) -> torch.Tensor:
    """Zero-pad ``(..., d, d // 2 + 1)`` spectra to ``(..., d_out, d_out // 2 + 1)`` (upsampling).

    The inverse of :func:`fourier_crop_2d` on the frequencies both keep.
    """
    d = spectra.shape[-2]
    if d_out < d:
        raise ValueError(f"cannot pad a box of {d} to {d_out}")
    out = spectra.new_zeros((*spectra.shape[:-2], d_out, d_out // 2 + 1))
    start = d_out // 2 - d // 2
    out[..., start : start + d, : d // 2 + 1] = spectra
    return out * (d_out / d) ** 2


def cropped_box_for_resolution(
    d: int, pixel_size: float, resolution_angstrom: float
) -> tuple[int, float]:
    """The smallest even box whose Nyquist reaches ``resolution_angstrom``, and its pixel size.

    Cropping a box-``d`` spectrum to ``d_out`` keeps frequencies up to ``d_out / 2`` Fourier
    pixels, i.e. Nyquist ``2 · pixel_size · d / d_out`` Å; the new pixel size is
    ``pixel_size · d / d_out``. Never larger than ``d``.
    """
    needed = 2 * d * pixel_size / resolution_angstrom  # box whose Nyquist is the resolution
    d_out = min(d, 2 * math.ceil(needed / 2))
    return d_out, pixel_size * d / d_out
