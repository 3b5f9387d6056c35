"""Fourier shell correlation between two maps."""

from __future__ import annotations

import torch

from cryotorch.physics.fourier import rfft_3d
from cryotorch.physics.shells import hermitian_weights, shell_index_3d, shell_sum

__all__ = ["fourier_shell_correlation", "resolution_at_threshold"]


def fourier_shell_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSC of two real maps ``(..., d, d, d)`` -> ``(..., d // 2 + 1)``, shells 0 to Nyquist.

    ``FSC(s) = Re Σ A B* / sqrt(Σ |A|² Σ |B|²)`` over the frequencies of shell ``s``.
    """
    d = a.shape[-1]
    fa, fb = rfft_3d(a), rfft_3d(b)
    shells, w = shell_index_3d(d, a.device), hermitian_weights(d, a.device).to(a.dtype)
    n = d // 2 + 1
    num = shell_sum((fa * fb.conj()).real * w, shells, n)
    den = torch.sqrt(
        shell_sum(fa.abs() ** 2 * w, shells, n) * shell_sum(fb.abs() ** 2 * w, shells, n)
    )
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def resolution_at_threshold(
    fsc: torch.Tensor, d: int, pixel_size: float, threshold: float = 0.143
) -> float:
    """Resolution (Å) of the first shell where ``fsc (d // 2 + 1,)`` drops below ``threshold``.

    Returns the Nyquist resolution ``2 * pixel_size`` when it never does.
    """
    below = torch.nonzero(fsc[1:] < threshold).flatten()
    shell = int(below[0]) if below.numel() else d // 2  # last shell above the threshold
    return d * pixel_size / max(shell, 1)
