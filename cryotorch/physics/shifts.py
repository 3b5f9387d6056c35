"""In-plane translations as phase ramps on rfft_2d spectra."""

from __future__ import annotations

import math

import torch

from cryotorch.physics.fourier import frequency_grid_2d

__all__ = ["phase_shift_2d"]


def phase_shift_2d(d: int, shift_px: torch.Tensor) -> torch.Tensor:
    """Phase ramps that move a box-``d`` image by ``shift_px (b, 2)`` = ``(x, y)`` pixels.

    Returns ``(b, d, d // 2 + 1)`` complex: multiplying an image's rfft_2d by it moves the
    image content by ``+shift``: ``exp(-2πi k·t / d)``. A RELION origin ``o`` (pixels) is a
    shift of ``-o`` (the particle centre is at ``d // 2 - o``).
    """
    k = frequency_grid_2d(d, shift_px.device).to(shift_px.dtype)  # (d, d//2+1, 2)
    phase = -2 * math.pi / d * (k[None] * shift_px[:, None, None, :]).sum(-1)
    return torch.polar(torch.ones_like(phase), phase)
