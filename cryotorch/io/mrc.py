"""MRC maps and whole image stacks (``.mrc``/``.mrcs``) through ``mrcfile``: read and written
whole.

Particle images are read lazily by :class:`ParticleImages`
(:mod:`~cryotorch.io.particle_images`, re-exported here, as are :func:`with_image_sizes`,
:data:`PIXEL_SIZE_RTOL` and :data:`UNSET_PIXEL_SIZES`), one memory-mapped stack at a time
(:class:`StackMap`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import mrcfile
import numpy as np

from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path
from cryotorch.io.mrc_header import check_mode, open_mrc
from cryotorch.io.particle_images import (
    MAX_PIXEL_VALUE,
    PIXEL_SIZE_RTOL,
    UNSET_PIXEL_SIZES,
    ParticleImages,
    with_image_sizes,
)
from cryotorch.io.stack_map import StackMap

__all__ = [
    "PIXEL_SIZE_RTOL",
    "UNSET_PIXEL_SIZES",
    "ParticleImages",
    "StackMap",
    "label_header",
    "read_map",
    "with_image_sizes",
    "write_map",
    "write_stack",
]


def read_map(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Read a 3D map: ``(volume (d, d, d) float32 indexed [z, y, x], voxel size in Å)``.

    The header is checked first (:func:`~cryotorch.io.mrc_header.open_mrc`: mode, axis order,
    the file's size), so that a corrupt header is named as such; a map holding NaN, Inf or
    values past :data:`MAX_PIXEL_VALUE` in magnitude (whose squares overflow) is refused."""
    path = Path(path)
    open_mrc(path, header_only=True).close()
    with open_mrc(path) as mrc:
        check_mode(path, int(mrc.header.mode))
        data = np.array(mrc.data, dtype=np.float32)  # a writable copy
        voxel = float(mrc.voxel_size.x)
    if data.ndim != 3:
        raise InputError(path, "header.nz", f"expected a 3D map, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(path, "data", "contains NaN or Inf")
    peak = float(np.abs(data).max(initial=0.0))
    if peak > MAX_PIXEL_VALUE:
        raise InputError(
            path,
            "data",
            f"holds a value of {peak:.3g}; expected at most {MAX_PIXEL_VALUE:.0e} in magnitude "
            "(squares of larger values overflow)",
        )
    return data, voxel


def label_header(mrc: mrcfile.mrcfile.MrcFile, labels: Sequence[str] = ()) -> None:
    """Replace mrcfile's time-stamped first label with a fixed one (reproducible files), and
    add ``labels`` (ASCII, 80 characters each at most, 9 at most)."""
    texts = ["Created by cryotorch", *labels]
    if len(texts) > 10 or any(len(text.encode("ascii")) > 80 for text in texts):
        raise ValueError(f"MRC labels are at most 10 of 80 ASCII characters: {texts}")
    for i, text in enumerate(texts):
        mrc.header.label[i] = text.encode("ascii")
    mrc.header.nlabl = len(texts)


def write_map(
    path: str | os.PathLike[str],
    volume: np.ndarray,
    voxel_size: float,
    labels: Sequence[str] = (),
) -> None:
    """Write a 3D map (float32, indexed [z, y, x]) with its voxel size (Å), atomically;
    ``labels``: header labels after cryotorch's own (80 ASCII characters each at most)."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size
            label_header(mrc, labels)


def write_stack(path: str | os.PathLike[str], images: np.ndarray, pixel_size: float) -> None:
    """Write an image stack ``(n, d, d)`` float32 as an MRCS file, atomically."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
            label_header(mrc)
