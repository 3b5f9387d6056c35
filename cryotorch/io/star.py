"""RELION particle STAR files (3.0 and 3.1+), read into and written from a ParticleTable.

* 3.1+: a ``data_optics`` block and a ``data_particles`` block; optics values are merged per
  particle through ``rlnOpticsGroup``; origins in Å (``rlnOriginXAngst``).
* 3.0: one block, optics values per particle (``rlnVoltage``, ...), origins in pixels
  (``rlnOriginX``), pixel size from ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification``
  or given by the caller.

``rlnImageName`` is ``index@stack`` with a 1-based index; a relative stack path resolves against
``data_dir`` when given, else against the STAR file's folder, then the working directory and
the two folders above the STAR file's (RELION writes paths relative to its project folder, and
a job's STAR file sits two levels below it). Writing keeps every input column,
every optics field and the row order, and adds new columns.

Refused: CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``) and 3D images
(``rlnImageDimensionality 3``, subtomograms). Messages name blocks as the file names them
(a RELION 3.0 ``data_images`` block is ``data_images``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import starfile

from cryotorch import conventions
from cryotorch.errors import InputError, warn_input
from cryotorch.io.atomic import atomic_path
from cryotorch.io.checks import STAR_NAMES, check_physical_ranges
from cryotorch.io.paths import resolve_stack_paths, stack_path_for_output
from cryotorch.particles import OpticsGroups, ParticleTable, SourceRecord

__all__ = ["read_star", "star_columns_not_written", "write_star", "write_star_blocks"]

StarVersion = Literal["3.0", "3.1"]

REQUIRED_PARTICLE_COLUMNS = (
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
)
REQUIRED_OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
# Columns a 3.0 file carries per particle that 3.1 moves to the optics block (or renames).
OPTICS_COLUMNS_30 = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnDetectorPixelSize",
    "rlnMagnification",
)
ORIGIN_COLUMNS_30 = ("rlnOriginX", "rlnOriginY")
ORIGIN_COLUMNS_31 = ("rlnOriginXAngst", "rlnOriginYAngst")
# Columns whose values a ParticleTable holds, so that every output format carries them (3.0
# and 3.1 names, particle and optics columns). rlnOpticsGroupName is held but has no .cs field.
TABLE_COLUMNS = frozenset(
    REQUIRED_PARTICLE_COLUMNS
    + REQUIRED_OPTICS_COLUMNS
    + OPTICS_COLUMNS_30
    + ORIGIN_COLUMNS_30
    + ORIGIN_COLUMNS_31
    + (
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnCtfScalefactor",
        "rlnRandomSubset",
        "rlnImagePixelSize",
        "rlnPixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",  # only 2 is read
        "rlnCtfDataAreCtfPremultiplied",  # only 0 is read
    )
)


def _block_names(blocks: list[str]) -> str:
    """Blocks (names without ``data_``) as the file names them: ``data_optics, data_particles``."""
    return ", ".join(f"data_{k}" for k in blocks)


def _read_blocks(path: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The file's loop tables by block name (``data_`` prefix removed), and the names of all
    its blocks, key/value ones included, in file order.

    A key/value ``data_optics`` block (one group written without ``loop_``) is a one-row table.
    """
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile/pandas raise many types on garbage
        raise InputError(path, None, f"not a readable STAR file ({exc})") from exc
    blocks = dict(blocks or {})
    if not blocks:
        raise InputError(path, None, "not a STAR file: no data_ block found")
    if isinstance(blocks.get("optics"), dict):
        blocks["optics"] = pd.DataFrame([blocks["optics"]])
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    for name, table in tables.items():
        twice = table.columns[table.columns.duplicated()]
        if len(twice):
            raise InputError(
                path, f"data_{name}", f"column {twice[0]} appears twice; expected each once"
            )
    if not tables:
        raise InputError(
            path,
            None,
            f"a STAR file with no particle table (its blocks: {_block_names(list(blocks))}, with "
            "key/value pairs only); expected a RELION particle file, whose particles are a "
            "loop_ table with rlnImageName",
        )
    return tables, list(blocks)


def _require(df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"data_{block}", f"missing required column(s) {', '.join(missing)}")


def _numeric(df: pd.DataFrame, column: str, path: Path, default: float | None = None) -> np.ndarray:
    """Column as float64, with a clear error naming the first bad row."""
    if column not in df.columns:
        if default is None:
            raise InputError(path, column, "required column is missing")
        return np.full(len(df), default, dtype=np.float64)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(
            path,
            column,
            f"row {bad[0] + 1}: expected a finite number, got {df[column].iloc[bad[0]]!r}",
        )
    return values


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
    bad = np.flatnonzero(~np.isfinite(index) | (index < 1) | (index != np.round(index)))
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
    half-set 1 or 2: the other half would be empty, so the engine's own split is used."""
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


def _optics_from_31(optics: pd.DataFrame, particles: pd.DataFrame, path: Path):
    _require(optics, REQUIRED_OPTICS_COLUMNS, path, "optics")
    if "rlnImagePixelSize" in optics.columns:
        pixel_size = _numeric(optics, "rlnImagePixelSize", path)
    elif "rlnPixelSize" in optics.columns:  # early 3.1 betas
        pixel_size = _numeric(optics, "rlnPixelSize", path)
    else:
        raise InputError(path, "data_optics", "missing required column rlnImagePixelSize")
    numbers = _numeric(optics, "rlnOpticsGroup", path)
    group_ids = numbers.astype(np.int64)
    bad = np.flatnonzero(group_ids != numbers)
    if bad.size:
        raise InputError(
            path,
            "data_optics: rlnOpticsGroup",
            f"row {bad[0] + 1}: expected an integer group number, got {numbers[bad[0]]}",
        )
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
        image_size=_numeric(optics, "rlnImageSize", path, default=0).astype(np.int64),
        voltage_kv=_numeric(optics, "rlnVoltage", path),
        spherical_aberration_mm=_numeric(optics, "rlnSphericalAberration", path),
        amplitude_contrast=_numeric(optics, "rlnAmplitudeContrast", path),
        number=group_ids,
    )
    if "rlnOpticsGroup" not in particles.columns:
        if len(groups) != 1:
            raise InputError(
                path, "rlnOpticsGroup", "missing, and the optics block has several groups"
            )
        return groups, np.zeros(len(particles), dtype=np.int64)
    wanted = _numeric(particles, "rlnOpticsGroup", path).astype(np.int64)
    order = np.argsort(group_ids)
    pos = np.searchsorted(group_ids[order], wanted).clip(0, len(group_ids) - 1)
    row = order[pos]
    bad = np.flatnonzero(group_ids[row] != wanted)
    if bad.size:
        raise InputError(
            path,
            "rlnOpticsGroup",
            f"row {bad[0] + 1}: optics group {wanted[bad[0]]} is not in data_optics "
            f"(which has {sorted(group_ids.tolist())})",
        )
    return groups, row


def _optics_from_30(
    particles: pd.DataFrame, path: Path, pixel_size: float | None, block: str
) -> tuple[OpticsGroups, np.ndarray]:
    """Optics groups (one per distinct set of values) and each particle's group row, from the
    per-particle optics columns of RELION 3.0 block ``data_<block>``."""
    _require(particles, REQUIRED_OPTICS_COLUMNS[1:], path, block)
    if pixel_size is not None:
        psize = np.full(len(particles), float(pixel_size))
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        psize = (
            _numeric(particles, "rlnDetectorPixelSize", path)
            * 1e4
            / _numeric(particles, "rlnMagnification", path)
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
            _numeric(particles, "rlnVoltage", path),
            _numeric(particles, "rlnSphericalAberration", path),
            _numeric(particles, "rlnAmplitudeContrast", path),
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


def _particle_block(
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
            f"a STAR file with no particle table (its blocks: {_block_names(names)}); none "
            "has an rlnImageName column, as a RELION particle file's particle block has",
        )
    if len(candidates) > 1:
        raise InputError(
            path,
            _block_names(candidates),
            "several blocks have rlnImageName; expected one particle block (RELION 3.0) or "
            "data_optics and data_particles (RELION 3.1+)",
        )
    return candidates[0], "3.0"


def _refuse_unsupported(df: pd.DataFrame, path: Path, block: str) -> None:
    """Refuse 3D and CTF-premultiplied images (``rlnImageDimensionality`` other than 2,
    ``rlnCtfDataAreCtfPremultiplied`` other than 0), naming the optics group or particle row."""
    for column, accepted in (("rlnImageDimensionality", 2), ("rlnCtfDataAreCtfPremultiplied", 0)):
        if column not in df.columns:
            continue
        values = _numeric(df, column, path)
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


def _origin_31(
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
            origin[:, axis] = _numeric(particles, angstrom, path)
            if pixels in particles.columns:
                ignored.append((pixels, angstrom))
        elif pixels in particles.columns:
            origin[:, axis] = _numeric(particles, pixels, path) * pixel_size
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
    blocks, names = _read_blocks(path)
    data_dir = Path(data_dir) if data_dir is not None else None
    block, version = _particle_block(blocks, names, path)
    particles = blocks[block].reset_index(drop=True)
    optics_df = blocks["optics"] if version == "3.1" else None
    if optics_df is not None:
        _refuse_unsupported(optics_df, path, "optics")
    _refuse_unsupported(particles, path, block)
    if len(particles) == 0:
        raise InputError(
            path, f"data_{block}", "the table is empty: expected at least one particle"
        )
    _require(particles, REQUIRED_PARTICLE_COLUMNS, path, block)

    if version == "3.1":
        optics, group = _optics_from_31(optics_df, particles, path)
        origin = _origin_31(particles, path, block, optics.pixel_size_angstrom[group])
    else:
        optics, group = _optics_from_30(particles, path, pixel_size, block)
        origin_px = np.stack(
            [_numeric(particles, c, path, default=0.0) for c in ORIGIN_COLUMNS_30], 1
        )
        origin = origin_px * optics.pixel_size_angstrom[group][:, None]

    stacks, index, root = _parse_image_names(particles["rlnImageName"], path, data_dir)
    rotation = conventions.euler_to_rotation(
        _numeric(particles, "rlnAngleRot", path),
        _numeric(particles, "rlnAngleTilt", path),
        _numeric(particles, "rlnAnglePsi", path),
    )
    subset = _half_sets(_numeric(particles, "rlnRandomSubset", path, default=0), path)
    table = ParticleTable(
        image_path=stacks,
        image_index=index,
        rotation=rotation,
        origin_angstrom=origin,
        defocus_u_angstrom=_numeric(particles, "rlnDefocusU", path),
        defocus_v_angstrom=_numeric(particles, "rlnDefocusV", path),
        astigmatism_angle_deg=_numeric(particles, "rlnDefocusAngle", path),
        phase_shift_deg=_numeric(particles, "rlnPhaseShift", path, default=0.0),
        ctf_bfactor=_numeric(particles, "rlnCtfBfactor", path, default=0.0),
        ctf_scale=_numeric(particles, "rlnCtfScalefactor", path, default=1.0),
        optics_group=group,
        random_subset=subset,
        optics=optics,
        source=SourceRecord(f"star{version}", path, particles, root, optics_df),
    )
    check_physical_ranges(table, path, STAR_NAMES)
    return table


# --- writing -----------------------------------------------------------------------------------


def write_star_blocks(blocks: dict[str, pd.DataFrame], path: str | os.PathLike[str]) -> None:
    """Write STAR data blocks atomically, with RELION's version line and no time stamp.

    starfile's first line names the time of writing; it is replaced by ``# version 30001`` so
    that the same tables always give the same bytes.
    """
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        lines = tmp.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# Created by the starfile"):
            lines[0] = "# version 30001\n"
        tmp.write_text("".join(lines))


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


def star_columns_not_written(source: SourceRecord, version: StarVersion) -> list[str]:
    """The columns of a STAR ``source`` that :func:`write_star` at ``version`` does not carry,
    in the file's order.

    None for the same version, or for 3.0 -> 3.1 (the optics columns move to ``data_optics``,
    pixel origins become Å). For 3.1 -> 3.0, which has no optics block: ``rlnOpticsGroup``
    and the optics columns other than voltage, Cs, amplitude contrast and pixel size (written
    per particle); ``rlnImageDimensionality`` 2 and ``rlnCtfDataAreCtfPremultiplied`` 0 are
    implied, and so are names ``opticsGroup<rlnOpticsGroup>`` (as a 3.0 file read back gives).
    """
    if source.format != "star3.1" or version != "3.0":
        return []
    optics = source.optics
    default_names = (
        "rlnOpticsGroupName" in optics
        and (
            optics["rlnOpticsGroupName"].astype(str)
            == "opticsGroup" + optics["rlnOpticsGroup"].astype(str)
        ).all()
    )
    carried = {"rlnOpticsGroupName"} if default_names else set()
    carried |= {
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImagePixelSize",
        "rlnPixelSize",
        "rlnImageDimensionality",
        "rlnCtfDataAreCtfPremultiplied",
    }
    return [c for c in optics.columns if c not in carried]


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
    particles = source.particles.copy() if same_version else pd.DataFrame(index=range(len(table)))
    if source is not None and source.format.startswith("star") and not same_version:
        # Keep the input's other columns; geometry and optics columns are rewritten below.
        owned = set(OPTICS_COLUMNS_30 + ORIGIN_COLUMNS_30 + ORIGIN_COLUMNS_31) | {"rlnOpticsGroup"}
        keep = [c for c in source.particles.columns if c not in owned]
        particles = source.particles[keep].copy()

    columns = _table_columns(table, path, absolute_paths)
    if same_version and version == "3.1":
        particles = _angstrom_origins(particles, columns)
    for name, values in columns.items():
        # A same-version source keeps its own columns; it gains none it did not have.
        if name not in particles.columns and not same_version:
            particles[name] = values
    if source is not None and source.format.startswith("star") and not source.keeps_paths(path):
        particles["rlnImageName"] = columns["rlnImageName"]  # relative paths would break
    if version == "3.0":
        optics = None  # no optics block; rlnOpticsGroup is dropped below
    else:
        optics = source.optics if same_version else _optics_block(table, path)
        if same_version and table.optics.image_size.all():
            # The box the file did not give (taken from the stacks since): never write none.
            sizes = optics.get("rlnImageSize", pd.Series(0, index=optics.index))
            if (pd.to_numeric(sizes, errors="coerce").fillna(0) <= 0).any():
                optics = optics.copy()
                optics["rlnImageSize"] = table.optics.image_size

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
