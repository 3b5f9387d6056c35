"""Particle table rows -> batches of Fourier-cropped images with their CTFs, shifts and poses.

The classification works on images cropped in Fourier space to the box ``d_work`` whose
Nyquist is the target resolution (most of the speed of a classification comes from here).
Everything in a :class:`ParticleBatch` refers to that box and its pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryotorch.errors import InputError
from cryotorch.particles import ImageSource
from cryotorch.physics.forward_model import particle_ctf, particle_shift_px
from cryotorch.physics.fourier import cropped_rfft_2d
from cryotorch.physics.shifts import phase_shift_2d
from cryotorch.physics.slices import Kernels, SliceGeometry, as_kernels, slice_geometry

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
    geometry: SliceGeometry | None


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
    use_ctf_scale
        Apply the table's per-particle CTF scale factor (the contrast "from input").
    cache_bytes
        Keep the cropped spectra of up to this many bytes of particles (on ``device``), so that
        later passes over them skip reading and transforming the images (RELION's
        ``--preread_images``, for the cropped images only: at box 48, 1 GB holds 111,848). The
        first particles seen take the slots; the rest are read every pass, so memory stays
        bounded whatever the number of particles. 0: none.
    kernels
        The slice kernels of the batches' geometries (a name of
        :data:`cryotorch.physics.slices.KERNEL_CHOICES` or a :class:`Kernels`): what the E- and
        M-steps extract and insert with. A ValueError for an unknown name.
    """

    def __init__(
        self,
        images: ImageSource,
        d_work: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        pad: int = 2,
        use_ctf_scale: bool = True,
        cache_bytes: int = 0,
        kernels: str | Kernels = "numba",
    ):
        self.kernels = as_kernels(kernels)
        self.use_ctf_scale = use_ctf_scale
        self.images = images
        self.table = images.table
        self.d_full = images.image_shape[-1]
        self.d = d_work
        self.device = device
        self.dtype = dtype
        self.pad = pad
        self.pixel_size = self.table.pixel_size_angstrom * self.d_full / d_work  # (n,) Å
        bytes_each = 2 * torch.finfo(dtype).bits // 8 * d_work * (d_work // 2 + 1)
        self.cache_capacity = min(len(self.table), int(cache_bytes) // bytes_each)
        self._cache: torch.Tensor | None = None  # (capacity, d, d // 2 + 1) complex
        self._slot = np.full(len(self.table), -1, dtype=np.int64)  # cache slot of each row
        self._n_cached = 0

    def __call__(self, rows: np.ndarray) -> ParticleBatch:
        """The batch of table ``rows``, whole."""
        return self.add_geometry(self.load(rows))

    def load(self, rows: np.ndarray) -> ParticleBatch:
        """The batch of table ``rows`` without its slice geometry (``geometry`` None): the
        part that can run in a prefetching thread (:meth:`add_geometry` completes it).
        On CUDA the images go through pinned memory with a non-blocking copy."""
        t = self.table
        spectra = self._spectra(np.asarray(rows))

        ctf = particle_ctf(
            t, rows, self.d, self.device, self.dtype, self.pixel_size, self.use_ctf_scale
        )
        shift_px = particle_shift_px(t, rows, self.device, self.dtype, self.pixel_size)
        rotations = torch.as_tensor(t.rotation[rows], dtype=self.dtype, device=self.device)
        shift = phase_shift_2d(self.d, shift_px)
        self._refuse_non_finite(np.asarray(rows), spectra, ctf, shift, rotations)
        return ParticleBatch(
            rows=np.asarray(rows),
            spectra=spectra,
            ctf=ctf,
            shift=shift,
            rotations=rotations,
            optics_group=torch.as_tensor(t.optics_group[rows], device=self.device),
            geometry=None,
        )

    def _refuse_non_finite(
        self,
        rows: np.ndarray,
        spectra: torch.Tensor,
        ctf: torch.Tensor,
        shift: torch.Tensor,
        rotations: torch.Tensor,
    ) -> None:
        """An :class:`InputError` naming the first of ``rows (b,)`` whose image power, CTF²,
        shift or pose is not finite in the working precision (NaN, inf, or a square that
        overflows), before any sum takes it: the readers check the files, but an image source
        or table given through the API is not checked, and one such particle would turn every
        map into NaN."""

        def per_row(x: torch.Tensor) -> torch.Tensor:  # (b,) bool: Σ |x|² is finite
            real = torch.view_as_real(x) if x.is_complex() else x
            return torch.isfinite(real.square().flatten(1).sum(1))

        finite = per_row(spectra) & per_row(ctf) & per_row(shift) & per_row(rotations)
        if bool(finite.all()):
            return
        i = int(torch.nonzero(~finite)[0, 0])
        row, t = int(rows[i]), self.table
        what = (
            "image"
            if not per_row(spectra[i : i + 1]).all()
            else "CTF (defocus, B-factor, scale)"
            if not per_row(ctf[i : i + 1]).all()
            else "shift or pose"
        )
        raise InputError(
            t.image_path[row],
            f"image {int(t.image_index[row]) + 1} (row {row + 1} of the particle table)",
            f"its {what} is not finite in {self.dtype} (NaN, inf, or a square past "
            "float range): no data set has such values",
        )

    def _spectra(self, rows: np.ndarray) -> torch.Tensor:
        """``(b, d, d // 2 + 1)`` complex: the cropped rfft_2d of the images of ``rows``, from
        the cache where all of them are in it, else read (and cached while there is room)."""
        slots = self._slot[rows]
        if len(rows) and (slots >= 0).all():
            assert self._cache is not None  # slots are >= 0 only once it is made
            return self._cache[torch.as_tensor(slots, device=self.device)]
        images = torch.from_numpy(self.images.read(rows)).to(self.dtype)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        spectra = cropped_rfft_2d(images, self.d)
        new = np.flatnonzero(slots < 0)[: self.cache_capacity - self._n_cached]
        if len(new):
            if self._cache is None:
                shape = (self.cache_capacity, *spectra.shape[1:])
                self._cache = torch.empty(shape, dtype=spectra.dtype, device=self.device)
            taken = np.arange(self._n_cached, self._n_cached + len(new))
            self._cache[torch.as_tensor(taken, device=self.device)] = spectra[
                torch.as_tensor(new, device=self.device)
            ]
            self._slot[rows[new]] = taken
            self._n_cached += len(new)
        return spectra

    def add_geometry(self, batch: ParticleBatch) -> ParticleBatch:
        """``batch`` with its slice geometry (in the caller's thread: the numba kernels are
        not run from two threads at once)."""
        batch.geometry = slice_geometry(batch.rotations, self.d, self.pad, self.kernels)
        return batch
