"""Radial resolution shells of rfft_2d / rfft_3d spectra, and sums over them.

Shell ``s`` holds the frequencies with ``round(|k|) == s`` (``k`` in Fourier pixels); shells
``0 .. d // 2`` reach Nyquist. Sums over a half spectrum count every entry with ``0 < kx < d/2``
twice (it stands for its Friedel mate too), so that they equal sums over the full spectrum.
"""

from __future__ import annotations

import torch

from cryotorch.physics.fourier import frequency_grid_2d, frequency_grid_3d

__all__ = ["hermitian_weights", "shell_index_2d", "shell_index_3d", "shell_sum"]


def shell_index_2d(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d, d // 2 + 1)`` int64 shell of each rfft_2d entry."""
    return frequency_grid_2d(d, device).norm(dim=-1).round().long()


def shell_index_3d(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d, d, d // 2 + 1)`` int64 shell of each rfft_3d entry."""
    return frequency_grid_3d(d, device).norm(dim=-1).round().long()


def hermitian_weights(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(d // 2 + 1,)`` float32 multiplicity of each kx column of a half spectrum (1 or 2)."""
    w = torch.full((d // 2 + 1,), 2.0, device=device)
    w[0] = 1.0
    if d % 2 == 0:
        w[-1] = 1.0
    return w


def shell_sum(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Sum ``values (..., *grid)`` over each shell of ``shells (*grid)`` -> ``(..., n_shells)``.

    Entries in shells ``>= n_shells`` are dropped. Multiply ``values`` by
    :func:`hermitian_weights` first for full-spectrum sums.
    """
    flat_shells = shells.flatten()
    keep = flat_shells < n_shells
    flat = values.flatten(-shells.dim())[..., keep]
    out = flat.new_zeros((*flat.shape[:-1], n_shells))
    return out.index_add(-1, flat_shells[keep], flat)
