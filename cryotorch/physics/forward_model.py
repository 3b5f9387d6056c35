"""The image formation model: X = CTF · shift · slice(V_k), for rows of a particle table.

Fourier pixel j of particle i seen as class k:

    X_ij = c_ij · (P_{A_i} V_k)_j · exp(-2πi k_j·t_i / d),   t_i = -origin_i / pixel_size (pixels).

Noise is added by the caller (simulation) or modelled by the E-step.
"""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.particles import ParticleTable
from cryotorch.physics.ctf import compute_ctf_2d
from cryotorch.physics.shifts import phase_shift_2d
from cryotorch.physics.slices import Kernels, extract_central_slices, slice_geometry

__all__ = ["particle_ctf", "particle_shift_px", "particle_spectra", "render_spectra"]


def particle_ctf(
    table: ParticleTable,
    rows: np.ndarray,
    d: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    pixel_size_angstrom: np.ndarray | None = None,
    use_scale: bool = True,
) -> torch.Tensor:
    """CTFs ``(b, d, d // 2 + 1)`` of table ``rows`` on the rfft_2d grid of box ``d``.

    ``pixel_size_angstrom (n,)`` replaces the table's pixel sizes for images that were
    Fourier-cropped (or padded) to box ``d``. ``use_scale=False`` leaves out the table's
    per-particle CTF scale factor (rlnCtfScalefactor, ``ctf/scale``).
    """
    psize = table.pixel_size_angstrom if pixel_size_angstrom is None else pixel_size_angstrom

    def col(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values)[rows], dtype=dtype, device=device)

    return compute_ctf_2d(
        d,
        pixel_size_angstrom=col(psize),
        defocus_u_angstrom=col(table.defocus_u_angstrom),
        defocus_v_angstrom=col(table.defocus_v_angstrom),
        astigmatism_angle_deg=col(table.astigmatism_angle_deg),
        voltage_kv=col(table.voltage_kv),
        spherical_aberration_mm=col(table.spherical_aberration_mm),
        amplitude_contrast=col(table.amplitude_contrast),
        phase_shift_deg=col(table.phase_shift_deg),
        bfactor=col(table.ctf_bfactor),
        scale=col(table.ctf_scale) if use_scale else 1.0,
    )


def particle_shift_px(
    table: ParticleTable,
    rows: np.ndarray,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    pixel_size_angstrom: np.ndarray | None = None,
) -> torch.Tensor:
    """``(b, 2)`` in-plane shift (pixels of ``pixel_size_angstrom (n,)``, default the table's)
    that moves a centred projection onto particle ``rows``."""
    psize = table.pixel_size_angstrom if pixel_size_angstrom is None else pixel_size_angstrom
    shift = -table.origin_angstrom[rows] / psize[rows, None]
    return torch.as_tensor(shift, dtype=dtype, device=device)


def particle_spectra(
    volumes: torch.Tensor,
    table: ParticleTable,
    rows: np.ndarray,
    d: int,
    pad: int = 2,
    dtype: torch.dtype = torch.float32,
    kernels: str | Kernels = "numba",
) -> torch.Tensor:
    """Noise-free spectra ``(b, k, d, d // 2 + 1)`` of table ``rows`` from interleaved volumes
    ``(n_voxels, 2k)``: their poses, shifts and CTFs, on the device of ``volumes``; the slices
    extracted by ``kernels`` (see :mod:`cryotorch.physics.slices.kernels`)."""
    device = volumes.device
    return render_spectra(
        volumes,
        torch.as_tensor(table.rotation[rows], dtype=dtype, device=device),
        particle_shift_px(table, rows, device, dtype),
        particle_ctf(table, rows, d, device, dtype),
        d,
        pad,
        kernels,
    )


def render_spectra(
    volumes: torch.Tensor,
    rotations: torch.Tensor,
    shift_px: torch.Tensor,
    ctf: torch.Tensor,
    d: int,
    pad: int = 2,
    kernels: str | Kernels = "numba",
) -> torch.Tensor:
    """Noise-free spectra ``(b, k, d, d // 2 + 1)`` from interleaved volumes ``(n_voxels, 2k)``.

    ``rotations (b, 3, 3)`` (RELION ``A``), ``shift_px (b, 2)``, ``ctf (b, d, d // 2 + 1)``;
    the slices extracted by ``kernels`` (see :mod:`cryotorch.physics.slices.kernels`).
    """
    slices = extract_central_slices(volumes, slice_geometry(rotations, d, pad, kernels))
    return slices * (ctf * phase_shift_2d(d, shift_px))[:, None]
