"""Fourier shell correlation between two maps."""

from __future__ import annotations

import torch

__all__ = ["fourier_shell_correlation", "shell_index_3d"]


def shell_index_3d(d: int, device: torch.device | None = None) -> torch.Tensor:
    """``(d, d, d)`` int64: the radial shell (rounded |k| in Fourier pixels) of each voxel of an
    unshifted ``fftn`` of a ``(d, d, d)`` volume."""
    k = torch.fft.fftfreq(d, d=1.0 / d, device=device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx**2 + ky**2 + kz**2).round().long()


def fourier_shell_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSC of two real maps ``(..., d, d, d)`` -> ``(..., d // 2 + 1)``, shells 0 to Nyquist.

    ``FSC(s) = Re Σ A B* / sqrt(Σ |A|² Σ |B|²)`` over the voxels of shell ``s``.
    """
    d = a.shape[-1]
    fa, fb = torch.fft.fftn(a, dim=(-3, -2, -1)), torch.fft.fftn(b, dim=(-3, -2, -1))
    shells = shell_index_3d(d, a.device).flatten()
    n = d // 2 + 1
    keep = shells < n

    def shell_sum(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(-3)[..., keep]
        out = torch.zeros(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
        return out.index_add_(-1, shells[keep], x)

    num = shell_sum((fa * fb.conj()).real)
    den = torch.sqrt(shell_sum(fa.abs() ** 2) * shell_sum(fb.abs() ** 2))
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)
