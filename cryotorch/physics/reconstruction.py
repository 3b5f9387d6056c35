"""CTF-weighted reconstruction of one map from particles with known poses (Wiener-like).

``V = Σ_i Pᵀ(c_i conj(S_i) X_i) / (Σ_i Pᵀ(c_i²) + λ)`` per Fourier voxel, ``S_i`` the phase ramp
of particle i's shift, ``c_i`` its CTF; then the inverse transform, a soft edge outside the
radius d/2 and the gridding correction (``projector.reconstruct_from_sums``). With a point group
(``symmetry``, RELION's ``--sym`` names) the sums are first summed over it
(:func:`~cryotorch.physics.symmetrise.symmetrise_sums`). This is the M-step of classification
with a single class and uniform weights, and the check of the projector (and of the
symmetrisation) against ``relion_reconstruct`` (``--sym``).
"""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.particles import ImageSource, reference_frame
from cryotorch.physics.forward_model import particle_ctf, particle_shift_px
from cryotorch.physics.fourier import rfft_2d
from cryotorch.physics.projector import reconstruct_from_sums
from cryotorch.physics.resampling import GroupResampling
from cryotorch.physics.shifts import phase_shift_2d
from cryotorch.physics.slices import Kernels, insert_for_reconstruction, slice_geometry
from cryotorch.physics.symmetrise import symmetrise_sums
from cryotorch.physics.symmetry import canonical_symmetry, symmetry_operators

__all__ = ["reconstruct_particles"]


def reconstruct_particles(
    images: ImageSource,
    rows: np.ndarray | None = None,
    pad: int = 2,
    wiener_constant: float = 1e-3,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float64,
    kernels: str | Kernels = "numba",
    symmetry: str = "C1",
) -> torch.Tensor:
    """Reconstruct one map ``(d, d, d)`` from the particles ``rows`` (default: all) of ``images``,
    at the box and pixel size of their :func:`~cryotorch.particles.reference_frame` (optics
    groups of other boxes or pixel sizes resampled onto its grid).

    ``wiener_constant`` λ is added to the CTF² sums, relative to their mean over the voxels
    that received data (a small value regularises the CTF zeros). ``kernels``: the slice
    kernels that insert (see :mod:`cryotorch.physics.slices.kernels`). ``symmetry``: the point
    group the map is given (``C1``: none), as ``relion_reconstruct --sym``.
    """
    table = images.table
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    frame = reference_frame(table)
    d = frame.box
    psize = np.full(len(table), frame.pixel_size_angstrom)  # (n,) Å, every image's on the grid
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    data = torch.zeros(n_vox, 2, dtype=dtype)
    weight = torch.zeros(n_vox, 1, dtype=dtype)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        x = _frame_spectra(images, batch, d, frame.pixel_size_angstrom, dtype)
        ctf = particle_ctf(table, batch, d, dtype=dtype, pixel_size_angstrom=psize)
        unshift = phase_shift_2d(
            d, particle_shift_px(table, batch, dtype=dtype, pixel_size_angstrom=psize)
        ).conj()
        rotations = torch.as_tensor(table.rotation[batch], dtype=dtype)
        geometry = slice_geometry(rotations, d, pad, kernels)
        insert_for_reconstruction(
            (ctf * unshift * x)[:, None], geometry, n_vox, (ctf**2)[:, None], out=(data, weight)
        )
    if canonical_symmetry(symmetry) != "C1":
        operators = symmetry_operators(symmetry, dtype)
        data, weight = symmetrise_sums(data, weight, d, pad, operators)
    reg = wiener_constant * weight[weight > 0].mean()
    return reconstruct_from_sums(data, weight, d, pad, regularisation=reg)[0]


def _frame_spectra(
    images: ImageSource, rows: np.ndarray, d: int, pixel_size: float, dtype: torch.dtype
) -> torch.Tensor:
    """``(b, d, d // 2 + 1)``: the rfft_2d of the images of ``rows`` on the grid of box ``d`` at
    ``pixel_size`` Å, each optics group's resampled onto it where it has another box or pixel
    size."""
    t = images.table
    groups = t.optics_group[rows]
    out = None
    for group in np.unique(groups):
        mine = np.flatnonzero(groups == group)
        x = torch.as_tensor(images.read(rows[mine]), dtype=dtype)
        resampling = GroupResampling(
            int(t.optics.image_size[group]),
            float(t.optics.pixel_size_angstrom[group]),
            d,
            pixel_size,
        )
        if resampling.box == d and resampling.same_extent:
            spectra = rfft_2d(x)
        else:
            spectra = resampling(x)
        if len(mine) == len(rows):
            return spectra
        if out is None:
            out = spectra.new_empty((len(rows), *spectra.shape[1:]))
        out[torch.as_tensor(mine)] = spectra
    assert out is not None  # rows is not empty
    return out
