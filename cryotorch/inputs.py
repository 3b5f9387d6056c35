"""The maps a run is given, read, checked against the particles and brought to the working
box: initial class maps, the consensus reference and the solvent and focus masks.

Each map must have the box and pixel size of the run's reference frame
(:func:`~cryotorch.particles.reference_frame`: the particles' first optics group, as RELION
requires of its references; a header pixel size of 0, or 1.0 Å, the usual "not set", is taken
as the frame's with a warning); the maps are Fourier-cropped to the working box ``d_work``
(``cryotorch.physics.fourier.fourier_crop_3d``).
"""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.engine.settings import Masks, MaskSettings
from cryotorch.errors import InputError, warn_input
from cryotorch.io import ParticleImages, read_map
from cryotorch.io.mrc import PIXEL_SIZE_RTOL, UNSET_PIXEL_SIZES
from cryotorch.particles import reference_frame
from cryotorch.physics.fourier import fourier_crop_3d
from cryotorch.physics.masks import mask_from_map

__all__ = ["read_initial_maps", "read_masks", "read_matching_map"]


def read_matching_map(path: str, images: ParticleImages) -> np.ndarray:
    """A map ``(d, d, d)`` that must have the box and pixel size of the particles' reference
    frame (an :class:`InputError` naming the file and header field otherwise)."""
    volume, voxel = read_map(path)
    frame = reference_frame(images.table)
    d, psize = frame.box, frame.pixel_size_angstrom
    if len(np.unique(images.table.optics_group)) > 1:  # say whose box and pixel size they are
        group = f"optics group {frame.number}"
        why = " (a run's maps have its first optics group's box and pixel size, as in RELION)"
        is_, has, their = f"{group} is", f"{group} has", f"{group}'s"
    else:
        why, is_, has, their = "", "the particles are", "the particles have", "the particles'"
    if volume.shape != (d, d, d):
        raise InputError(path, "header.nx/ny/nz", f"map is {volume.shape}, {is_} {d}x{d}{why}")
    if abs(voxel - psize) > PIXEL_SIZE_RTOL * psize:
        if voxel not in UNSET_PIXEL_SIZES:
            raise InputError(path, "header.voxel_size", f"{voxel:.4f} Å, {has} {psize:.4f} Å{why}")
        usual = "the usual value for 'not set'" if voxel else "'not set'"
        warn_input(
            path,
            "header.voxel_size",
            f"{voxel:.1f} Å, {usual}; taken as {their} {psize:.4f} Å",
        )
    return volume


def _crop(volume: np.ndarray, d_work: int) -> torch.Tensor:
    return fourier_crop_3d(torch.as_tensor(volume).double(), d_work).float()


def read_initial_maps(
    paths: list[str] | None, num_classes: int, images: ParticleImages, d_work: int
) -> torch.Tensor | None:
    """``data.initial_maps`` (one .mrc per class) read, checked and cropped to the working
    box: ``(k, d_work, d_work, d_work)``; None without any."""
    if paths is None:
        return None
    if len(paths) != num_classes:
        raise InputError(
            "configuration",
            "data.initial_maps",
            f"{len(paths)} maps given for model.num_classes = {num_classes}",
        )
    maps = []
    for path in paths:
        volume = read_matching_map(path, images)
        if not volume.any():
            raise InputError(path, "data", "the map is all zeros")
        maps.append(volume)
    return _crop(np.stack(maps), d_work)


def read_masks(
    mask: MaskSettings,
    reference: str | None,
    images: ParticleImages,
    d_work: int,
    work_pixel_size: float,
) -> Masks:
    """The solvent and focus masks and the consensus map (``data.reference``), at the
    working box of ``work_pixel_size`` Å. ``mask.solvent=auto`` makes the solvent mask from
    ``data.reference`` when there is one (as ``from_reference``); without one the mask is
    None here and the run makes it from all particles' reconstruction
    (:func:`~cryotorch.engine.consensus.solvent_mask_from_data`)."""
    consensus = None if reference is None else _crop(read_matching_map(reference, images), d_work)
    solvent = None
    if mask.solvent == "from_reference" or (mask.solvent == "auto" and consensus is not None):
        if consensus is None:
            raise InputError(
                "configuration", "mask.solvent", "from_reference needs data.reference (a map)"
            )
        solvent = mask_from_map(
            consensus,
            work_pixel_size,
            mask.threshold,
            mask.extend_angstrom,
            mask.soft_edge_angstrom,
            mask.lowpass_angstrom,
        )
        assert reference is not None  # consensus is its map
        if not bool(torch.isfinite(solvent).all()) or not bool((solvent > 0).any()):
            # An empty mask would zero every class map; a map of zeros, of no positive
            # density or a threshold past its maximum makes one.
            raise InputError(
                reference,
                "data",
                f"the solvent mask made from this map (mask.solvent={mask.solvent}, "
                f"mask.threshold={mask.threshold:g}) is empty: expected a map whose low-passed "
                "density rises above the threshold times its maximum",
            )
    elif mask.solvent not in ("sphere", "auto"):
        solvent = _read_mask(mask.solvent, images, d_work)
    focus = None if mask.focus is None else _read_mask(mask.focus, images, d_work)
    return Masks(solvent=solvent, focus=focus, consensus=consensus)


def _read_mask(path: str, images: ParticleImages, d_work: int) -> torch.Tensor:
    volume = read_matching_map(path, images)
    if volume.min() < -0.01 or volume.max() > 1.01 or volume.max() <= 0:
        raise InputError(
            path,
            "data",
            f"a mask holds values in [0, 1]; this one spans {volume.min():.3g}..{volume.max():.3g}",
        )
    return _crop(volume, d_work).clamp(0, 1)
