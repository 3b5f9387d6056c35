"""Writing a ParticleTable as a RELION particle STAR file (3.0 or 3.1).

Writing keeps every input column, every optics field and the row order, and adds new columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from cryotorch import conventions
from cryotorch.errors import warn_input
from cryotorch.io.paths import stack_path_for_output
from cryotorch.io.star_columns import (
    OPTICS_COLUMNS_30,
    ORIGIN_COLUMNS_30,
    ORIGIN_COLUMNS_31,
    StarVersion,
)
from cryotorch.io.star_tables import write_star_blocks
from cryotorch.particles import OpticsGroups, ParticleTable

__all__ = ["write_star"]


def _table_columns(
    table: ParticleTable, output: Path, absolute_paths: bool
) -> dict[str, np.ndarray]:
    """The particle columns that describe ``table`` in RELION 3.1 terms."""
    rot, tilt, psi = conventions.rotation_to_euler(table.rotation)
    stacks = stack_path_for_output(table.image_path, output.parent, absolute_paths)
    index = conventions.zero_based_to_one_based(table.image_index)
    columns = {
        "rlnImageName": np.char.add(np.char.add(np.char.zfill(index.astype(str), 6), "@"), stacks),
        "rlnAngleRot": rot,
        "rlnAngleTilt": tilt,
        "rlnAnglePsi": psi,
        "rlnOriginXAngst": table.origin_angstrom[:, 0],
        "rlnOriginYAngst": table.origin_angstrom[:, 1],
        "rlnDefocusU": table.defocus_u_angstrom,
        "rlnDefocusV": table.defocus_v_angstrom,
        "rlnDefocusAngle": table.astigmatism_angle_deg,
        "rlnPhaseShift": table.phase_shift_deg,
        "rlnCtfBfactor": table.ctf_bfactor,
        "rlnCtfScalefactor": table.ctf_scale,
        "rlnOpticsGroup": _relion_group_numbers(table.optics)[table.optics_group],
    }
    if (table.random_subset > 0).any():
        columns["rlnRandomSubset"] = table.random_subset
    return columns


def _relion_group_numbers(optics: OpticsGroups, output: Path | None = None) -> np.ndarray:
    """``(g,)`` the ``rlnOpticsGroup`` of each group: its own number, or, when some number is
    below 1 (cryoSPARC's exposure groups start at 0, RELION's optics groups at 1), every number
    shifted by the same amount so that the smallest is 1. With ``output``, a shift is warned of.
    """
    assert optics.number is not None  # OpticsGroups.__post_init__ always sets it
    shift = max(0, 1 - int(optics.number.min()))
    if shift and output is not None:
        warn_input(
            output,
            "rlnOpticsGroup",
            f"optics group numbers {sorted(optics.number.tolist())} include numbers below 1, "
            f"which RELION does not accept; every group is written as its number + {shift}",
        )
    return optics.number + shift


def _optics_block(table: ParticleTable, output: Path) -> pd.DataFrame:
    o = table.optics
    image_size = o.image_size.copy()
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": o.name,
            "rlnOpticsGroup": _relion_group_numbers(o, output),
            "rlnImagePixelSize": o.pixel_size_angstrom,
            "rlnImageSize": image_size,
            "rlnImageDimensionality": np.full(len(o), 2),
            "rlnVoltage": o.voltage_kv,
            "rlnSphericalAberration": o.spherical_aberration_mm,
            "rlnAmplitudeContrast": o.amplitude_contrast,
        }
    )


def _angstrom_origins(particles: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A 3.1 particle block whose origin on an axis is only a RELION 3.0 pixel column
    (``rlnOriginX``), with that column replaced in place by the table's Å column
    (``rlnOriginXAngst``, from ``columns``): RELION 3.1+ reads only the Å columns."""
    for pixels, angstrom in zip(ORIGIN_COLUMNS_30, ORIGIN_COLUMNS_31, strict=True):
        if pixels in particles.columns and angstrom not in particles.columns:
            at = particles.columns.get_loc(pixels)
            particles = particles.drop(columns=pixels)
            particles.insert(at, angstrom, columns[angstrom])
    return particles


def write_star(
    table: ParticleTable,
    path: str | os.PathLike[str],
    new_columns: dict[str, np.ndarray] | None = None,
    version: StarVersion = "3.1",
    absolute_paths: bool = True,
) -> None:
    """Write ``table`` as a RELION particle STAR file, atomically.

    When the table was read from a STAR file of the same version, every input column and
    optics field is written back verbatim in the same row order, and no other column is
    added (stack paths are rewritten only if the output is in another folder; a 3.1 file's
    RELION 3.0 pixel origin column without its Å column is replaced by the Å column);
    otherwise the columns are made from the table, keeping the input's non-geometry columns
    (what a 3.0 output cannot carry: :func:`star_columns_not_written`).
    ``new_columns`` (name -> ``(n,)`` array) are added or replace existing ones. Stack paths
    that cannot be copied are written absolute (``absolute_paths``) or relative to the output
    folder.
    """
    path = Path(path)
    source = table.source
    same_version = source is not None and source.format == f"star{version}"
    if source is not None and source.format.startswith("star"):
        rows = cast(pd.DataFrame, source.particles)  # STAR rows: a DataFrame (.cs: numpy)
        if same_version:
            particles = rows.copy()
        else:
            # Keep the input's other columns; geometry and optics columns are rewritten below.
            owned = set(OPTICS_COLUMNS_30 + ORIGIN_COLUMNS_30 + ORIGIN_COLUMNS_31)
            owned |= {"rlnOpticsGroup"}
            keep = [c for c in rows.columns if c not in owned]
            particles = rows[keep].copy()
    else:
        particles = pd.DataFrame(index=range(len(table)))

    columns = _table_columns(table, path, absolute_paths)
    if same_version and version == "3.1":
        particles = _angstrom_origins(particles, columns)
    for name, values in columns.items():
        # A same-version source keeps its own columns; it gains none it did not have.
        if name not in particles.columns and not same_version:
            particles[name] = values
    if source is not None and source.format.startswith("star") and not source.keeps_paths(path):
        particles["rlnImageName"] = columns["rlnImageName"]  # relative paths would break
    optics: pd.DataFrame | None
    if version == "3.0":
        optics = None  # no optics block; rlnOpticsGroup is dropped below
    elif same_version:
        assert source is not None and source.optics is not None  # a 3.1 source has data_optics
        optics = source.optics
        if table.optics.image_size.all():
            # The box the file did not give (taken from the stacks since): never write none.
            sizes = optics.get("rlnImageSize", pd.Series(0, index=optics.index))
            if (pd.to_numeric(sizes, errors="coerce").fillna(0) <= 0).any():
                optics = optics.copy()
                optics["rlnImageSize"] = table.optics.image_size
    else:
        optics = _optics_block(table, path)

    if version == "3.0":
        px = table.pixel_size_angstrom
        for name, values in {
            "rlnOriginX": table.origin_angstrom[:, 0] / px,
            "rlnOriginY": table.origin_angstrom[:, 1] / px,
            "rlnVoltage": table.voltage_kv,
            "rlnSphericalAberration": table.spherical_aberration_mm,
            "rlnAmplitudeContrast": table.amplitude_contrast,
            "rlnDetectorPixelSize": px,  # µm; with a magnification of 1e4 this is the Å value
            "rlnMagnification": np.full(len(table), 10000.0),
        }.items():
            if name not in particles.columns:
                particles[name] = values
        particles = particles.drop(
            columns=[c for c in (*ORIGIN_COLUMNS_31, "rlnOpticsGroup") if c in particles]
        )

    for name, values in (new_columns or {}).items():
        values = np.asarray(values)
        if len(values) != len(particles):
            raise ValueError(f"new column {name} has {len(values)} rows, expected {len(particles)}")
        particles[name] = values

    blocks = (
        {"images": particles} if version == "3.0" else {"optics": optics, "particles": particles}
    )
    write_star_blocks(blocks, path)
