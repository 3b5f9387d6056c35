"""Particle table rows -> batches of Fourier-cropped images with their CTFs, shifts and poses.

The classification works on images cropped in Fourier space to the box ``d_work`` whose
Nyquist is the target resolution (most of the speed of a classification comes from here).
Everything in a :class:`ParticleBatch` refers to that box and its pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryotorch.io.mrc import ParticleImages
from cryotorch.physics.ctf import compute_ctf_2d
from cryotorch.physics.fourier import fourier_crop_2d, rfft_2d
from cryotorch.physics.shifts import phase_shift_2d
from cryotorch.physics.slices import SliceGeometry, slice_geometry

__all__ = ["BatchMaker", "ParticleBatch"]


@dataclass
class ParticleBatch:
    """``b`` particles at the working box ``d``.

    ``rows (b,)`` table rows; ``spectra (b, d, d // 2 + 1)`` complex, their images' rfft_2d;
    ``ctf (b, d, d // 2 + 1)``; ``shift (b, d, d // 2 + 1)`` complex phase ramp that moves a
    centred projection onto the particle; ``rotations (b, 3, 3)``; ``optics_group (b,)``;
    ``geometry``: where their central slices fall in the padded volumes (shared by the E- and
    M-steps).
    """

    rows: np.ndarray
    spectra: torch.Tensor
    ctf: torch.Tensor
    shift: torch.Tensor
    rotations: torch.Tensor
    optics_group: torch.Tensor
    geometry: SliceGeometry


class BatchMaker:
    """Reads and prepares batches of particles for the E- and M-steps.

    Parameters
    ----------
    images
        The lazy image reader of the particle table.
    d_work
        Working box after Fourier cropping (``<=`` the images' box).
    pad
        Padding factor of the Fourier volumes the slices are taken from.
    device, dtype
        Where and in which real precision batches are made.
    """

    def __init__(
        self,
        images: ParticleImages,
        d_work: int,
        device: torch.device,
        dtype=torch.float32,
        pad: int = 2,
    ):
        self.images = images
        self.table = images.table
        self.d_full = images.image_shape[-1]
        self.d = d_work
        self.device = device
        self.dtype = dtype
        self.pad = pad
        self.pixel_size = self.table.pixel_size_angstrom * self.d_full / d_work  # (n,) Å

    def __call__(self, rows: np.ndarray) -> ParticleBatch:
        t = self.table
        images = torch.as_tensor(self.images.read(rows), device=self.device, dtype=self.dtype)
        spectra = fourier_crop_2d(rfft_2d(images), self.d)

        def col(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values)[rows], dtype=self.dtype, device=self.device)

        ctf = compute_ctf_2d(
            self.d,
            pixel_size_angstrom=col(self.pixel_size),
            defocus_u_angstrom=col(t.defocus_u_angstrom),
            defocus_v_angstrom=col(t.defocus_v_angstrom),
            astigmatism_angle_deg=col(t.astigmatism_angle_deg),
            voltage_kv=col(t.voltage_kv),
            spherical_aberration_mm=col(t.spherical_aberration_mm),
            amplitude_contrast=col(t.amplitude_contrast),
            phase_shift_deg=col(t.phase_shift_deg),
            bfactor=col(t.ctf_bfactor),
            scale=col(t.ctf_scale),
        )
        shift_px = -torch.as_tensor(t.origin_angstrom[rows], dtype=self.dtype, device=self.device)
        shift_px = shift_px / col(self.pixel_size)[:, None]
        rotations = torch.as_tensor(t.rotation[rows], dtype=self.dtype, device=self.device)
        return ParticleBatch(
            rows=np.asarray(rows),
            spectra=spectra,
            ctf=ctf,
            shift=phase_shift_2d(self.d, shift_px),
            rotations=rotations,
            optics_group=torch.as_tensor(t.optics_group[rows], device=self.device),
            geometry=slice_geometry(rotations, self.d, self.pad),
        )
