"""Images of one box and pixel size brought onto the working grid of another, in Fourier space:
how every optics group of a run reaches the one grid the classification works on.

A box-``d`` image at pixel size ``p`` Å is sampled in Fourier space at steps of ``1 / (d p)``
(1/Å) up to its Nyquist ``1 / (2 p)``; its physical extent is ``d p`` Å. The working grid is
box ``d_out`` at ``p_out``: steps of ``1 / L``, ``L = d_out p_out`` the working extent, up to
``1 / (2 p_out)``.

- The same extent (``d p = L``): the working frequencies are the image's own, and its working
  spectrum is its Fourier crop (``p <= p_out``) or its zero-padded spectrum (``p > p_out``),
  exactly.
- Another extent: the image is first cut to, or zero-padded to, the working extent in real
  space about its centre pixel ``d // 2``, then treated as above. Where ``L / p`` is a whole
  number of pixels that is a cut or pad by whole pixels and an FFT, exactly; otherwise the
  discrete Fourier sums of the centred ``round(L / p)``-pixel window (or of the whole image, if
  smaller) are evaluated at the working frequencies directly, two matrix products per image (a
  zoom DFT). A group whose pixel size differs a little from the frame's (magnification
  refinement) at the same box thus keeps every pixel.

The spectra are scaled by ``(p / p_out)²``, so that ``irfft_2d`` of them has the real-space
values of the image (the convention of :func:`~cryotorch.physics.fourier.fourier_crop_2d`).
Before a cut or pad, each image's background (the mean of its outermost pixels) is taken off:
on a grid of the image's own extent a constant background is the DC term alone, which the
likelihood does not use, but zero-padded it becomes a step at the box's edge, and cut to a
window that is not a whole period it leaks into every frequency.

What the working grid then holds that the image did not measure is said too, for the noise
model: frequencies past the image's own Nyquist (:attr:`GroupResampling.max_shell`; the
spectra are zero past it), and, for a window narrower than the working extent, Fourier pixels
that are not independent: sampling a ``w p``-Å window at steps ``1 / L`` gives
``(w p / L)²`` independent pixels per working pixel (:attr:`GroupResampling.information`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryotorch.physics.fourier import cropped_rfft_2d, fourier_pad_2d, rfft_2d
from cryotorch.physics.shells import shell_index_2d

__all__ = ["EXTENT_RTOL", "GroupResampling", "resample_rfft_2d"]

# Extents this close (relative) are the same: a frequency error of 1e-4 Fourier pixel per pixel
# of radius, far below anything the data resolve.
EXTENT_RTOL = 1e-4
# A working extent within this many pixels of a whole number of the image's pixels is cut (or
# padded) by whole pixels.
WHOLE_PIXEL_ATOL = 1e-3


@dataclass(frozen=True)
class GroupResampling:
    """How images of box ``box`` at ``pixel_size`` Å reach the grid of box ``d_out`` at
    ``pixel_size_out`` Å (see the module's docstring). Calling it resamples images
    ``(b, box, box)`` to spectra ``(b, d_out, d_out // 2 + 1)``."""

    box: int
    pixel_size: float
    d_out: int
    pixel_size_out: float

    @property
    def extent_out(self) -> float:
        """The working extent ``L = d_out · pixel_size_out``, Å."""
        return self.d_out * self.pixel_size_out

    @property
    def same_extent(self) -> bool:
        """Whether the images span the working extent (within :data:`EXTENT_RTOL`)."""
        return abs(self.box * self.pixel_size - self.extent_out) <= EXTENT_RTOL * self.extent_out

    @property
    def whole_pixels(self) -> int | None:
        """``L / pixel_size`` where it is a whole number of the images' pixels, else None."""
        if self.same_extent:
            return self.box
        n = self.extent_out / self.pixel_size
        return round(n) if abs(n - round(n)) <= WHOLE_PIXEL_ATOL else None

    @property
    def window(self) -> int:
        """The edge, in pixels, of the centred part of each image used: all of it, or the
        part that fits in the working extent."""
        n = self.whole_pixels
        if n is None:
            n = round(self.extent_out / self.pixel_size)
        return min(self.box, n)

    @property
    def information(self) -> float:
        """Independent Fourier pixels per working-grid pixel, ``(window · pixel_size / L)²``:
        1 where the window spans the working extent, less where it is narrower."""
        used = self.window * self.pixel_size
        if abs(used - self.extent_out) <= EXTENT_RTOL * self.extent_out:
            return 1.0
        return min(1.0, (used / self.extent_out) ** 2)

    @property
    def max_shell(self) -> int:
        """The last working-grid shell (``round(|k|)``, Fourier pixels of ``d_out``) whose
        every pixel lies below the images' Nyquist: ``d_out // 2`` (no limit) where
        ``pixel_size <= pixel_size_out``."""
        nyquist = self.extent_out / (2 * self.pixel_size)  # in working Fourier pixels
        if nyquist >= self.d_out / 2 * (1 - EXTENT_RTOL):
            return self.d_out // 2
        return math.floor(nyquist - 0.5)

    @property
    def exact(self) -> bool:
        """Whether an FFT does it (the same extent, or a cut or pad by whole pixels), rather
        than the zoom DFT."""
        return self.whole_pixels is not None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Spectra ``(b, d_out, d_out // 2 + 1)`` complex of real images ``(b, box, box)``,
        zero past :attr:`max_shell`."""
        if images.shape[-1] != self.box or images.shape[-2] != self.box:
            raise ValueError(f"expected images of {self.box}x{self.box}, got {tuple(images.shape)}")
        n = self.whole_pixels
        if not self.same_extent:  # a cut or pad: on a zero background first
            images = images - _border_mean(images)[..., None, None]
        if n is not None:
            spectra = _same_extent(_centred_window(images, n), self.d_out)
        else:
            spectra = _zoom_rfft_2d(
                images, self.window, self.pixel_size, self.d_out, self.extent_out
            )
            spectra = spectra * (self.pixel_size / self.pixel_size_out) ** 2
        if self.max_shell < self.d_out // 2:
            spectra = spectra * band_mask_2d(self.d_out, self.max_shell, spectra.device)
        return spectra


def resample_rfft_2d(
    images: torch.Tensor, pixel_size: float, d_out: int, pixel_size_out: float
) -> torch.Tensor:
    """The spectra ``(b, d_out, d_out // 2 + 1)`` on the grid of box ``d_out`` at
    ``pixel_size_out`` Å of real images ``(b, d, d)`` at ``pixel_size`` Å (see the module's
    docstring): :class:`GroupResampling` applied once."""
    return GroupResampling(images.shape[-1], pixel_size, d_out, pixel_size_out)(images)


def band_mask_2d(d: int, max_shell: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d, d // 2 + 1)`` float32: 1 on the rfft_2d entries of shells ``<= max_shell`` (the
    corners past ``d // 2`` counted in shell ``d // 2``, as the noise model counts them), else 0."""
    return (shell_index_2d(d, device).clamp_max(d // 2) <= max_shell).float()


def _border_mean(images: torch.Tensor) -> torch.Tensor:
    """``(...,)``: the mean of the outermost pixels (the edge rows and columns, each pixel
    once) of images ``(..., d, d)``."""
    edge = images[..., 0, :].sum(-1) + images[..., -1, :].sum(-1)
    edge = edge + images[..., 1:-1, 0].sum(-1) + images[..., 1:-1, -1].sum(-1)
    return edge / (4 * images.shape[-1] - 4)


def _centred_window(images: torch.Tensor, n: int) -> torch.Tensor:
    """Images ``(..., d, d)`` cut to, or zero-padded to, ``(..., n, n)`` with the centre pixel
    ``d // 2`` at ``n // 2``."""
    d = images.shape[-1]
    if n == d:
        return images
    if n < d:
        start = d // 2 - n // 2
        return images[..., start : start + n, start : start + n]
    out = images.new_zeros((*images.shape[:-2], n, n))
    start = n // 2 - d // 2
    out[..., start : start + d, start : start + d] = images
    return out


def _same_extent(images: torch.Tensor, d_out: int) -> torch.Tensor:
    """The working spectra of images ``(..., n, n)`` that span the working extent."""
    n = images.shape[-1]
    if d_out <= n:
        return cropped_rfft_2d(images, d_out)
    return fourier_pad_2d(rfft_2d(images), d_out)


def _zoom_rfft_2d(
    images: torch.Tensor, window: int, pixel_size: float, d_out: int, extent_out: float
) -> torch.Tensor:
    """``Σ_yx w[y, x] exp(-2πi (ky y + kx x) p / L)`` over the centred ``window``-pixel part
    ``w`` of images ``(b, d, d)`` (``y, x`` in pixels from the centre pixel ``d // 2``) at the
    working frequencies ``ky = -d_out // 2 .. (d_out - 1) // 2``, ``kx = 0 .. d_out // 2``
    (cycles per ``L = extent_out``): ``(b, d_out, d_out // 2 + 1)``, unscaled."""
    part = _centred_window(images, window)
    dtype = torch.complex128 if images.dtype == torch.float64 else torch.complex64
    position = (torch.arange(window, dtype=torch.float64) - window // 2) * (pixel_size / extent_out)
    ky = torch.arange(d_out, dtype=torch.float64) - d_out // 2
    kx = torch.arange(d_out // 2 + 1, dtype=torch.float64)
    row_phase = -2 * math.pi * ky[:, None] * position[None, :]
    col_phase = -2 * math.pi * position[:, None] * kx[None, :]
    rows = torch.polar(torch.ones_like(row_phase), row_phase)
    cols = torch.polar(torch.ones_like(col_phase), col_phase)
    rows = rows.to(dtype=dtype, device=images.device)  # (d_out, window)
    cols = cols.to(dtype=dtype, device=images.device)  # (window, d_out // 2 + 1)
    return rows @ part.to(dtype) @ cols
