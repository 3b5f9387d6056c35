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

from cryotorch.particles import ImageSource
from cryotorch.physics.forward_model import particle_ctf, particle_shift_px
from cryotorch.physics.fourier import rfft_2d
from cryotorch.physics.projector import reconstruct_from_sums
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
    """Reconstruct one map ``(d, d, d)`` from the particles ``rows`` (default: all) of ``images``.

    ``wiener_constant`` λ is added to the CTF² sums, relative to their mean over the voxels
    that received data (a small value regularises the CTF zeros). ``kernels``: the slice
    kernels that insert (see :mod:`cryotorch.physics.slices.kernels`). ``symmetry``: the point
    group the map is given (``C1``: none), as ``relion_reconstruct --sym``.
    """
    table = images.table
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    d = images.image_shape[-1]
    p = pad * d
    n_vox = p * p * (p // 2 + 1)
    data = torch.zeros(n_vox, 2, dtype=dtype)
    weight = torch.zeros(n_vox, 1, dtype=dtype)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        x = rfft_2d(torch.as_tensor(images.read(batch), dtype=dtype))
        ctf = particle_ctf(table, batch, d, dtype=dtype)
        unshift = phase_shift_2d(d, particle_shift_px(table, batch, dtype=dtype)).conj()
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
