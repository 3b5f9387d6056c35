"""Particle table rows -> batches of Fourier-cropped images with their CTFs, shifts and poses.

The classification works on images cropped in Fourier space to the box ``d_work`` whose
Nyquist is the target resolution (most of the speed of a classification comes from here).
Everything in a :class:`ParticleBatch` refers to that box and its pixel size.

Optics groups of other boxes and pixel sizes (RELION 3.1+) are resampled onto the same grid:
the run's :class:`~cryotorch.particles.ReferenceFrame` (the first optics group's box and
pixel size) cropped to ``d_work``, each group's images by
:class:`~cryotorch.physics.resampling.GroupResampling`; each particle's CTF is computed with
its own group's optics on that grid, its shift in Å turned into working pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryotorch.engine.noise import NoiseModel
from cryotorch.errors import InputError
from cryotorch.particles import ImageSource, reference_frame
from cryotorch.physics.forward_model import particle_ctf, particle_shift_px
from cryotorch.physics.fourier import cropped_rfft_2d
from cryotorch.physics.resampling import GroupResampling, band_mask_2d
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
    M-steps); ``shell_counts (b, d // 2 + 1)``: the independent full-spectrum pixels of each
    shell of each image, for the noise estimate, where they are not all of the shell's pixels
    (an optics group resampled from a coarser pixel or a smaller extent,
    :attr:`BatchMaker.shell_counts`); None: all of them.
    """

    rows: np.ndarray
    spectra: torch.Tensor
    ctf: torch.Tensor
    shift: torch.Tensor
    rotations: torch.Tensor
    optics_group: torch.Tensor
    geometry: SliceGeometry | None
    shell_counts: torch.Tensor | None = None


class BatchMaker:
    """Reads and prepares batches of particles for the E- and M-steps.

    Every optics group's images are resampled onto the grid of box ``d_work`` at the working
    pixel size ``frame.pixel_size_angstrom · frame.box / d_work`` (:attr:`frame`, the run's
    :func:`~cryotorch.particles.reference_frame`); where a group's images reach less far
    (a coarser pixel) their spectra and CTFs are zero past their Nyquist, and where they span
    less than the working extent their pixels count less in the noise estimate
    (:attr:`shell_counts`). :attr:`one_grid`: every group has the frame's box and extent, and
    one Fourier crop serves all, as for a single group.

    Parameters
    ----------
    images
        The lazy image reader of the particle table.
    d_work
        Working box after Fourier cropping (``<=`` the reference frame's box).
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
        self.frame = reference_frame(self.table)
        self.d_full = self.frame.box  # the reference frame's box
        self.d = d_work
        self.device = device
        self.dtype = dtype
        self.pad = pad
        frame_psize = np.full(len(self.table), self.frame.pixel_size_angstrom)
        self.pixel_size = frame_psize * self.d_full / d_work  # (n,) Å, the working pixel size
        self._resampling = self._group_resampling()
        # Every group has the frame's box and extent: one Fourier crop for all, as for one group.
        self.one_grid = all(
            r is None or (r.box == self.d_full and r.same_extent) for r in self._resampling
        )
        self.shell_counts, self._band = self._group_bands()
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
        optics_group = torch.as_tensor(t.optics_group[rows], device=self.device)
        if self._band is not None:  # nothing past a group's own Nyquist
            ctf = ctf * self._band[optics_group]
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
            optics_group=optics_group,
            geometry=None,
            shell_counts=None if self.shell_counts is None else self.shell_counts[optics_group],
        )

    def _group_resampling(self) -> list[GroupResampling | None]:
        """Each optics group's way onto the working grid (None for a group without
        particles); a ValueError for a group whose box is not known."""
        t, frame = self.table, self.frame
        work_psize = float(self.pixel_size[0]) if len(t) else frame.pixel_size_angstrom
        used = np.zeros(len(t.optics), dtype=bool)
        used[t.optics_group] = True
        out: list[GroupResampling | None] = []
        for group in range(len(t.optics)):
            box = int(t.optics.image_size[group])
            if not used[group]:
                out.append(None)
                continue
            if box <= 0:
                assert t.optics.number is not None  # OpticsGroups sets it
                raise ValueError(
                    f"optics group {t.optics.number[group]} has no box size (image_size 0)"
                )
            psize = float(t.optics.pixel_size_angstrom[group])
            out.append(GroupResampling(box, psize, self.d, work_psize))
        return out

    def _group_bands(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(g, d // 2 + 1)`` independent full-spectrum pixels per shell of one image of each
        group and the ``(g, d, d // 2 + 1)`` mask of its band (1 up to its last shell,
        :attr:`GroupResampling.max_shell`); both None where every group fills the working
        grid (one extent, no coarser pixel)."""
        limited = [
            r
            for r in self._resampling
            if r is not None and (r.max_shell < self.d // 2 or r.information < 1)
        ]
        if not limited:
            return None, None
        d, device = self.d, self.device
        pixels = NoiseModel.flat(1, d, torch.float64, device).pixels_per_shell()  # (d//2+1,)
        counts, band = [], []
        for r in self._resampling:
            last = d // 2 if r is None else r.max_shell
            weight = 1.0 if r is None else r.information
            counts.append(pixels * weight * (torch.arange(d // 2 + 1, device=device) <= last))
            band.append(band_mask_2d(d, last, device))
        return torch.stack(counts), torch.stack(band).to(self.dtype)

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
        spectra = self._read_spectra(rows)
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

    def _read_images(self, rows: np.ndarray) -> torch.Tensor:
        """``(b, d_g, d_g)`` images of ``rows`` (of one box), on the device in ``dtype``."""
        images = torch.from_numpy(self.images.read(rows)).to(self.dtype)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        return images

    def _read_spectra(self, rows: np.ndarray) -> torch.Tensor:
        """``(b, d, d // 2 + 1)``: the images of ``rows`` read and brought onto the working
        grid, each optics group's by its own resampling (one Fourier crop for all where every
        group has the reference frame's box and extent)."""
        if self.one_grid:
            return cropped_rfft_2d(self._read_images(rows), self.d)
        groups = self.table.optics_group[rows]
        spectra = torch.empty(
            (len(rows), self.d, self.d // 2 + 1),
            dtype=torch.complex128 if self.dtype == torch.float64 else torch.complex64,
            device=self.device,
        )
        for group in np.unique(groups):
            mine = np.flatnonzero(groups == group)
            resampling = self._resampling[group]
            assert resampling is not None  # every group with particles has one
            taken = torch.as_tensor(mine, device=self.device)
            spectra[taken] = resampling(self._read_images(rows[mine]))
        return spectra

    def add_geometry(self, batch: ParticleBatch) -> ParticleBatch:
        """``batch`` with its slice geometry (in the caller's thread: the numba kernels are
        not run from two threads at once)."""
        batch.geometry = slice_geometry(batch.rotations, self.d, self.pad, self.kernels)
        return batch
