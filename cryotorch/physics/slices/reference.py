"""The slow, obviously correct extraction the fast kernels are held to (in the tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryotorch.physics.fourier import frequency_grid_2d

__all__ = ["extract_central_slices_reference"]


def extract_central_slices_reference(
    volumes_ft_full: torch.Tensor, rotations: torch.Tensor, d: int, pad: int = 2
) -> torch.Tensor:
    """Reference extraction with ``grid_sample`` on full (non-Hermitian-folded) centred spectra.

    ``volumes_ft_full (k, p, p, p)`` complex is ``fftshift(fftn(ifftshift(padded maps)))``,
    indexed ``[kz + p//2, ky + p//2, kx + p//2]``; ``rotations (b, 3, 3)`` (RELION ``A``).
    Returns ``(b, k, d, d // 2 + 1)`` like :func:`cryotorch.physics.slices.extract_central_slices`.
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
