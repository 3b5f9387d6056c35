"""RELION 3.0 vs 3.1+ particle files: which block holds the particles and which version the
file is, and each version's optics groups and origins.

* 3.1+: a ``data_optics`` block and a ``data_particles`` block; optics values are merged per
  particle through ``rlnOpticsGroup``; origins in Å (``rlnOriginXAngst``).
* 3.0: one block, optics values per particle (``rlnVoltage``, ...), origins in pixels
  (``rlnOriginX``), pixel size from ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification``
  or given by the caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryotorch.errors import InputError, warn_input
from cryotorch.io.star_columns import (
    ORIGIN_COLUMNS_30,
    ORIGIN_COLUMNS_31,
    REQUIRED_OPTICS_COLUMNS,
    StarVersion,
)
from cryotorch.io.star_tables import block_names, numeric_column, require_columns
from cryotorch.particles import OpticsGroups

__all__ = ["optics_from_30", "optics_from_31", "origin_31", "particle_block"]


def particle_block(
    blocks: dict[str, pd.DataFrame], names: list[str], path: Path
) -> tuple[str, StarVersion]:
    """The particle block's name (without ``data_``) and the file's RELION version, from its
    loop tables ``blocks`` and the names of all its blocks ``names``.

    3.1+: ``data_optics`` and ``data_particles``. 3.0: the one block with ``rlnImageName``,
    whatever its name (``data_``, ``data_images``, ``data_particles`` without ``data_optics``:
    RELION converts such a file as 3.0 too).
    """
    if "particles" in blocks and "optics" in blocks:
        return "particles", "3.1"
    named = [k for k, v in blocks.items() if k != "optics" and "rlnImageName" in v.columns]
    if "optics" in blocks and len(named) == 1 and "rlnVoltage" not in blocks[named[0]].columns:
        raise InputError(
            path,
            f"data_{named[0]}",
            "a RELION 3.1 file (it has data_optics) whose particle block is named "
            f"data_{named[0]}; expected data_particles",
        )
    if "particles" in blocks and "rlnVoltage" not in blocks["particles"].columns:
        raise InputError(
            path,
            "data_optics",
            "missing: a data_particles block without per-particle optics columns "
            "(rlnVoltage, as RELION 3.0 has) needs a data_optics block (RELION 3.1)",
        )
    candidates = [k for k, v in blocks.items() if "rlnImageName" in v.columns]
    if not candidates:
        raise InputError(
            path,
            None,
            f"a STAR file with no particle table (its blocks: {block_names(names)}); none "
            "has an rlnImageName column, as a RELION particle file's particle block has",
        )
    if len(candidates) > 1:
        raise InputError(
            path,
            block_names(candidates),
            "several blocks have rlnImageName; expected one particle block (RELION 3.0) or "
            "data_optics and data_particles (RELION 3.1+)",
        )
    return candidates[0], "3.0"


def optics_from_31(
    optics: pd.DataFrame, particles: pd.DataFrame, path: Path
) -> tuple[OpticsGroups, np.ndarray]:
    require_columns(optics, REQUIRED_OPTICS_COLUMNS, path, "optics")
    if "rlnImagePixelSize" in optics.columns:
        pixel_size = numeric_column(optics, "rlnImagePixelSize", path)
    elif "rlnPixelSize" in optics.columns:  # early 3.1 betas
        pixel_size = numeric_column(optics, "rlnPixelSize", path)
    else:
        raise InputError(path, "data_optics", "missing required column rlnImagePixelSize")
    numbers = numeric_column(optics, "rlnOpticsGroup", path)
    bad = np.flatnonzero(~_whole(numbers))
    if bad.size:
        raise InputError(
            path,
            "data_optics: rlnOpticsGroup",
            f"row {bad[0] + 1}: expected an integer group number, got {_shown(numbers[bad[0]])}",
        )
    group_ids = numbers.astype(np.int64)
    ids, counts = np.unique(group_ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            path,
            "data_optics: rlnOpticsGroup",
            f"optics group {ids[counts > 1][0]} appears {counts[counts > 1][0]} times; "
            "expected each group once",
        )
    names = (
        optics["rlnOpticsGroupName"].astype(str).to_numpy()
        if "rlnOpticsGroupName" in optics.columns
        else np.array([f"opticsGroup{g}" for g in group_ids])
    )
    groups = OpticsGroups(
        name=names,
        pixel_size_angstrom=pixel_size,
        image_size=_image_sizes(optics, path, group_ids),
        voltage_kv=numeric_column(optics, "rlnVoltage", path),
        spherical_aberration_mm=numeric_column(optics, "rlnSphericalAberration", path),
        amplitude_contrast=numeric_column(optics, "rlnAmplitudeContrast", path),
        number=group_ids,
    )
    if "rlnOpticsGroup" not in particles.columns:
        if len(groups) != 1:
            raise InputError(
                path, "rlnOpticsGroup", "missing, and the optics block has several groups"
            )
        return groups, np.zeros(len(particles), dtype=np.int64)
    # Compared as read (float64), so that 1.5 is not group 1 and 1e19 no wrapped integer.
    wanted = numeric_column(particles, "rlnOpticsGroup", path)
    order = np.argsort(group_ids)
    pos = np.searchsorted(group_ids[order], wanted).clip(0, len(group_ids) - 1)
    row = order[pos]
    bad = np.flatnonzero(group_ids[row] != wanted)
    if bad.size:
        raise InputError(
            path,
            "rlnOpticsGroup",
            f"row {bad[0] + 1}: optics group {_shown(wanted[bad[0]])} is not in data_optics "
            f"(which has {sorted(group_ids.tolist())})",
        )
    return groups, row


# Largest group number or box size read: past 2**53 a float64 (as pandas reads them) no longer
# holds every integer, and an int64 not every float64.
LARGEST_INTEGER = 2**53


def _whole(values: np.ndarray) -> np.ndarray:
    """Which of ``values`` (float64) are integers that an int64 holds exactly."""
    return (values == np.round(values)) & (np.abs(values) <= LARGEST_INTEGER)


def _shown(value: float) -> str:
    """A number read as float64, as the file wrote it: 3 (not 3.0), 1.5, 1e+19."""
    return str(int(value)) if _whole(np.asarray(value)) else f"{value:g}"


def _image_sizes(optics: pd.DataFrame, path: Path, group_ids: np.ndarray) -> np.ndarray:
    """``rlnImageSize`` of each optics group (0 where the file gives none: the stacks' box is
    used); a value that is no box (negative, a fraction) is refused naming its group."""
    sizes = numeric_column(optics, "rlnImageSize", path, default=0)
    bad = np.flatnonzero(~_whole(sizes) | (sizes < 0))
    if bad.size:
        raise InputError(
            path,
            "data_optics: rlnImageSize",
            f"optics group {group_ids[bad[0]]}: {_shown(sizes[bad[0]])} is not a box size: "
            "expected a whole number of pixels",
        )
    return sizes.astype(np.int64)


def optics_from_30(
    particles: pd.DataFrame, path: Path, pixel_size: float | None, block: str
) -> tuple[OpticsGroups, np.ndarray]:
    """Optics groups (one per distinct set of values) and each particle's group row, from the
    per-particle optics columns of RELION 3.0 block ``data_<block>``."""
    require_columns(particles, REQUIRED_OPTICS_COLUMNS[1:], path, block)
    if pixel_size is not None:
        psize = np.full(len(particles), float(pixel_size))
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        psize = (
            numeric_column(particles, "rlnDetectorPixelSize", path)
            * 1e4
            / numeric_column(particles, "rlnMagnification", path)
        )
    else:
        raise InputError(
            path,
            "rlnDetectorPixelSize",
            "RELION 3.0 file without rlnDetectorPixelSize/rlnMagnification: give the pixel size "
            "(--pixel-size, or pixel_size=)",
        )
    values = np.stack(
        [
            psize,
            numeric_column(particles, "rlnVoltage", path),
            numeric_column(particles, "rlnSphericalAberration", path),
            numeric_column(particles, "rlnAmplitudeContrast", path),
        ],
        axis=1,
    )
    unique, group = np.unique(values, axis=0, return_inverse=True)
    groups = OpticsGroups(
        name=np.array([f"opticsGroup{g + 1}" for g in range(len(unique))]),
        pixel_size_angstrom=unique[:, 0],
        image_size=np.zeros(len(unique), dtype=np.int64),
        voltage_kv=unique[:, 1],
        spherical_aberration_mm=unique[:, 2],
        amplitude_contrast=unique[:, 3],
        number=np.arange(1, len(unique) + 1),
    )
    return groups, group.reshape(-1).astype(np.int64)


def origin_31(
    particles: pd.DataFrame, path: Path, block: str, pixel_size: np.ndarray
) -> np.ndarray:
    """``(n, 2)`` origins in Å from a RELION 3.1+ particle block; ``pixel_size`` ``(n,)`` Å.

    ``rlnOriginXAngst``/``rlnOriginYAngst`` give them; an axis without a column is 0. The
    RELION 3.0 pixel columns ``rlnOriginX``/``rlnOriginY`` in such a file are warned of, and

    * ignored where the Å column of the same axis is present;
    * otherwise converted to Å with each particle's optics-group pixel size
      (``rlnImagePixelSize``), as RELION's own 3.0 -> 3.1 conversion does
      (``StarConverter::translateOffsets``: offset in pixels times the group's pixel size).

    RELION 3.1+ applies that conversion only to files without ``data_optics``; reading a file
    with ``data_optics`` it ignores the pixel columns and takes missing Å origins as 0
    (``Experiment::read``), which would silently discard the shifts; converting keeps them.
    """
    origin = np.zeros((len(particles), 2))
    ignored, converted = [], []
    for axis in range(2):
        pixels, angstrom = ORIGIN_COLUMNS_30[axis], ORIGIN_COLUMNS_31[axis]
        if angstrom in particles.columns:
            origin[:, axis] = numeric_column(particles, angstrom, path)
            if pixels in particles.columns:
                ignored.append((pixels, angstrom))
        elif pixels in particles.columns:
            origin[:, axis] = numeric_column(particles, pixels, path) * pixel_size
            converted.append(pixels)
    legacy = "RELION 3.0 origin column(s), in pixels, in a RELION 3.1 file (it has data_optics)"
    if ignored:
        warn_input(
            path,
            f"data_{block}: {', '.join(p for p, _ in ignored)}",
            f"{legacy}; ignored: the Å column(s) {', '.join(a for _, a in ignored)} give the "
            "origins",
        )
    if converted:
        warn_input(
            path,
            f"data_{block}: {', '.join(converted)}",
            f"{legacy} without rlnOriginXAngst/rlnOriginYAngst; converted to Å with each "
            "particle's optics-group pixel size (rlnImagePixelSize), as RELION's 3.0 -> 3.1 "
            "conversion does (RELION 3.1+ itself would read these origins as 0)",
        )
    return origin
