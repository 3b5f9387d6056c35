"""Reading RELION particle STAR files (3.0 and 3.1+) into a ParticleTable.

* 3.1+: a ``data_optics`` block and a ``data_particles`` block; optics values are merged per
  particle through ``rlnOpticsGroup``; origins in Å (``rlnOriginXAngst``).
* 3.0: one block, optics values per particle (``rlnVoltage``, ...), origins in pixels
  (``rlnOriginX``), pixel size from ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification``
  or given by the caller.

``rlnImageName`` is ``index@stack`` with a 1-based index; a relative stack path resolves against
``data_dir`` when given, else against the STAR file's folder, then the working directory and
the two folders above the STAR file's (RELION writes paths relative to its project folder, and
a job's STAR file sits two levels below it).

Refused: CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``) and 3D images
(``rlnImageDimensionality 3``, subtomograms). Messages name blocks as the file names them
(a RELION 3.0 ``data_images`` block is ``data_images``).

The pieces: :mod:`~cryotorch.io.star_tables` (data blocks), :mod:`~cryotorch.io.star_columns`
(RELION's column names), :mod:`~cryotorch.io.star_versions` (3.0 vs 3.1+ optics and origins),
:mod:`~cryotorch.io.star_writer` (:func:`write_star`, re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryotorch import conventions
from cryotorch.errors import InputError, warn_input
from cryotorch.io.checks import STAR_NAMES, check_physical_ranges
from cryotorch.io.paths import resolve_stack_paths
from cryotorch.io.star_columns import (
    ORIGIN_COLUMNS_30,
    REQUIRED_PARTICLE_COLUMNS,
    TABLE_COLUMNS,
    star_columns_not_written,
)
from cryotorch.io.star_tables import (
    numeric_column,
    read_blocks,
    require_columns,
    write_star_blocks,
)
from cryotorch.io.star_versions import optics_from_30, optics_from_31, origin_31, particle_block
from cryotorch.io.star_writer import write_star
from cryotorch.particles import ParticleTable, SourceRecord

__all__ = [
    "TABLE_COLUMNS",
    "read_star",
    "star_columns_not_written",
    "write_star",
    "write_star_blocks",
]


def _parse_image_names(
    names: pd.Series, path: Path, data_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, Path]:
    """``index@stack`` (1-based) -> (absolute stack paths, 0-based indices, stack root)."""
    parts = names.astype(str).str.split("@", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        row = int(np.flatnonzero(parts[1].isna())[0]) if parts.shape[1] == 2 else 0
        raise InputError(
            path, "rlnImageName", f"row {row + 1}: expected 'index@stack', got {names.iloc[row]!r}"
        )
    index = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64)
    # Past 2**53 a float64 holds not every integer, and past 2**63 the int64 index wraps.
    whole = (index == np.round(index)) & (index <= 2**53)
    bad = np.flatnonzero(~np.isfinite(index) | (index < 1) | ~whole)
    if bad.size:
        raise InputError(
            path,
            "rlnImageName",
            f"row {bad[0] + 1}: expected a 1-based integer index before '@', "
            f"got {names.iloc[bad[0]]!r}",
        )
    # RELION writes stack paths relative to its project folder, the one it runs in; a STAR
    # file sits in a job folder (Class3D/job012/) two levels below it.
    fallback = (Path.cwd(), path.parent.parent, path.parent.parent.parent)
    stacks, root = resolve_stack_paths(
        parts[1].to_numpy(dtype=str), path.parent, data_dir, fallback
    )
    return stacks, conventions.one_based_to_zero_based(index), root


def _half_sets(subset: np.ndarray, path: Path) -> np.ndarray:
    """``rlnRandomSubset`` as int64, or all 0 ("not given") when every particle has the same
    half-set 1 or 2: the other half would be empty, so the engine's own split is used.

    Any other value is refused (a column of 0 aside: cryotorch's "not given"): the engine
    would replace a file's half-sets with its own without a word."""
    bad = np.flatnonzero(~np.isin(subset, (1, 2)))
    if bad.size and (subset != 0).any():
        raise InputError(
            path,
            "rlnRandomSubset",
            f"row {bad[0] + 1}: {subset[bad[0]]:g} is not a half-set: expected 1 or 2",
        )
    subset = subset.astype(np.int64)
    values = np.unique(subset)
    if len(values) == 1 and values[0] in (1, 2):
        warn_input(
            path,
            "rlnRandomSubset",
            f"gives every particle the same half-set ({values[0]}), which leaves the other "
            "half empty; ignored: cryotorch makes its own random halves",
        )
        return np.zeros_like(subset)
    return subset


def _refuse_unsupported(df: pd.DataFrame, path: Path, block: str) -> None:
    """Refuse 3D and CTF-premultiplied images (``rlnImageDimensionality`` other than 2,
    ``rlnCtfDataAreCtfPremultiplied`` other than 0), naming the optics group or particle row."""
    for column, accepted in (("rlnImageDimensionality", 2), ("rlnCtfDataAreCtfPremultiplied", 0)):
        if column not in df.columns:
            continue
        values = numeric_column(df, column, path)
        bad = np.flatnonzero(values != accepted)
        if not bad.size:
            continue
        row, value = bad[0], values[bad[0]]
        if column == "rlnCtfDataAreCtfPremultiplied":
            problem = (
                "the images are CTF-premultiplied (as RELION's subtomogram / --ctf_premultiplied "
                "data); cryotorch classifies images that are not (it applies each particle's CTF "
                "itself, so these would be CTF-weighted twice)"
            )
        elif value == 3:
            problem = "3D images (subtomograms); cryotorch classifies 2D particle images"
        else:
            problem = f"{value:g}-dimensional images; cryotorch classifies 2D particle images"
        where = (
            f"optics group {df['rlnOpticsGroup'].iloc[row]}"
            if block == "optics" and "rlnOpticsGroup" in df.columns
            else f"row {row + 1}"
        )
        raise InputError(path, f"data_{block}: {column}", f"{where}: {problem}")


def read_star(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    pixel_size: float | None = None,
) -> ParticleTable:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    Parameters
    ----------
    path
        The ``.star`` file.
    data_dir
        Folder that relative stack paths in ``rlnImageName`` resolve against (default: the
        STAR file's folder).
    pixel_size
        Pixel size in Å for RELION 3.0 files that do not give one (ignored for 3.1+).
    """
    path = Path(path)
    blocks, names = read_blocks(path)
    data_dir = Path(data_dir) if data_dir is not None else None
    block, version = particle_block(blocks, names, path)
    particles = blocks[block].reset_index(drop=True)
    optics_df = blocks["optics"] if version == "3.1" else None
    if optics_df is not None:
        _refuse_unsupported(optics_df, path, "optics")
    _refuse_unsupported(particles, path, block)
    if len(particles) == 0:
        raise InputError(
            path, f"data_{block}", "the table is empty: expected at least one particle"
        )
    require_columns(particles, REQUIRED_PARTICLE_COLUMNS, path, block)

    if version == "3.1":
        optics, group = optics_from_31(optics_df, particles, path)
        origin = origin_31(particles, path, block, optics.pixel_size_angstrom[group])
    else:
        optics, group = optics_from_30(particles, path, pixel_size, block)
        origin_px = np.stack(
            [numeric_column(particles, c, path, default=0.0) for c in ORIGIN_COLUMNS_30], 1
        )
        origin = origin_px * optics.pixel_size_angstrom[group][:, None]

    stacks, index, root = _parse_image_names(particles["rlnImageName"], path, data_dir)
    rotation = conventions.euler_to_rotation(
        numeric_column(particles, "rlnAngleRot", path),
        numeric_column(particles, "rlnAngleTilt", path),
        numeric_column(particles, "rlnAnglePsi", path),
    )
    subset = _half_sets(numeric_column(particles, "rlnRandomSubset", path, default=0), path)
    table = ParticleTable(
        image_path=stacks,
        image_index=index,
        rotation=rotation,
        origin_angstrom=origin,
        defocus_u_angstrom=numeric_column(particles, "rlnDefocusU", path),
        defocus_v_angstrom=numeric_column(particles, "rlnDefocusV", path),
        astigmatism_angle_deg=numeric_column(particles, "rlnDefocusAngle", path),
        phase_shift_deg=numeric_column(particles, "rlnPhaseShift", path, default=0.0),
        ctf_bfactor=numeric_column(particles, "rlnCtfBfactor", path, default=0.0),
        ctf_scale=numeric_column(particles, "rlnCtfScalefactor", path, default=1.0),
        optics_group=group,
        random_subset=subset,
        optics=optics,
        source=SourceRecord(
            "star3.1" if version == "3.1" else "star3.0", path, particles, root, optics_df
        ),
    )
    check_physical_ranges(table, path, STAR_NAMES)
    return table
