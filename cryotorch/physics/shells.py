"""Radial resolution shells of rfft_2d / rfft_3d spectra, and sums over them.

Shell ``s`` holds the frequencies with ``round(|k|) == s`` (``k`` in Fourier pixels); shells
``0 .. d // 2`` reach Nyquist. Sums over a half spectrum count every entry with ``0 < kx < d/2``
twice (it stands for its Friedel mate too), so that they equal sums over the full spectrum.
"""

from __future__ import annotations

import torch

from cryotorch.physics.fourier import frequency_grid_2d, frequency_grid_3d

__all__ = [
    "hermitian_weights",
    "mean_per_shell_3d",
    "shell_index_2d",
    "shell_index_3d",
    "shell_sum",
]


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


def mean_per_shell_3d(
    values: torch.Tensor, hermitian: bool, corners_in_nyquist: bool = False
) -> torch.Tensor:
    """Mean of ``values (..., d, d, d // 2 + 1)`` (on an rfft_3d half spectrum, e.g. a power
    ``|F|²``) over each shell: ``(..., d // 2 + 1)``; 0 in a shell without entries.

    ``hermitian=True``: each entry counts with its :func:`hermitian_weights` multiplicity, so
    the mean is that over the full spectrum (RELION's power spectrum, the M-step's τ²).
    ``hermitian=False``: every stored entry counts once, the mean over the half spectrum (the
    τ² of the gradient penalty, which sums over those same entries). The two differ (the
    ``kx = 0`` and Nyquist columns weigh half as much in the first), so both are kept.
    ``corners_in_nyquist``: the entries past Nyquist (the corners of the box) count in the last
    shell (the penalty covers them too); else they are left out.
    """
    d = values.shape[-3]
    n_shells = d // 2 + 1
    shells = shell_index_3d(d, values.device)
    if corners_in_nyquist:
        shells = shells.clamp_max(d // 2)
    counts = torch.ones(values.shape[-3:], dtype=values.dtype, device=values.device)
    if hermitian:
        w = hermitian_weights(d, values.device).to(values.dtype)
        values, counts = values * w, counts * w
    return shell_sum(values, shells, n_shells) / shell_sum(counts, shells, n_shells).clamp_min(1)
