"""Reading cryoSPARC ``.cs`` particle files into a ParticleTable: which field gives which value.

A ``.cs`` file is a numpy structured array saved with ``np.save``, read without unpickling
anything (:mod:`~cryotorch.io.cs_arrays`). We chose plain numpy over ``cryosparc-tools``'s
``Dataset`` (BSD-3) because it needs nothing beyond numpy, reads lazily enough for our use,
and lets us give our own error messages; ``cryosparc-tools`` is used in the tests as an
outside reader and writer of the format.

Fields used (see :mod:`cryotorch.conventions` for the conversions): ``blob/path`` (a leading
``>`` is dropped), ``blob/idx`` (0-based), ``blob/psize_A``, ``blob/shape``, ``ctf/*``,
``alignments3D/pose`` (rotation vector, radians), ``alignments3D/shift`` (pixels),
``alignments3D/split``, ``ctf/exp_group_id`` (exposure group = optics group). A passthrough
file (``J*_passthrough_particles.cs``) is merged in first
(:func:`~cryotorch.io.cs_arrays.merge_passthrough`).

Writing is :mod:`~cryotorch.io.cs_writer` (:func:`write_cs`, re-exported here, as are
:func:`add_fields` and :func:`particle_uids`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryotorch import conventions
from cryotorch.errors import InputError, warn_input
from cryotorch.io.checks import CS_NAMES, RANGES, check_physical_ranges
from cryotorch.io.cs_arrays import (
    add_fields,
    check_field_shapes,
    field_names,
    float_field,
    load_cs_array,
    merge_passthrough,
)
from cryotorch.io.cs_uids import particle_uids
from cryotorch.io.cs_writer import write_cs
from cryotorch.io.paths import resolve_stack_paths
from cryotorch.particles import OpticsGroups, ParticleTable, SourceRecord

__all__ = ["add_fields", "particle_uids", "read_cs", "write_cs"]

REQUIRED_FIELDS = (
    "blob/path",
    "blob/idx",
    "blob/psize_A",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "alignments3D/pose",
)


def _image_size(data: np.ndarray, path: Path) -> np.ndarray:
    """Each particle's box in pixels, ``blob/shape``'s last number (0 where the field is
    missing: the stack's is used). Numbers only, and whole ones: numpy's cast to int64 would
    parse text, drop an imaginary part or a fraction (16.5 read as 16) without a word."""
    if "blob/shape" not in field_names(data):
        return np.zeros(len(data), np.int64)
    values = float_field(data, "blob/shape", path)[:, -1]
    # (A box past the stack's, 2**32 - 1 say, is the stack check's to name; past 2**53 the
    # cast to int64 is not exact.)
    bad = np.flatnonzero((values != np.round(values)) | (np.abs(values) > 2**53))
    if bad.size:
        raise InputError(
            path,
            "blob/shape",
            f"row {bad[0] + 1}: expected a box size in pixels (a whole number), "
            f"got {values[bad[0]]:g}",
        )
    return values.astype(np.int64)


def _optics(
    data: np.ndarray, path: Path, psize: np.ndarray, image_size: np.ndarray
) -> tuple[OpticsGroups, np.ndarray]:
    """The optics groups ``(g,)`` and each particle's group row ``(n,)`` int64.

    With ``ctf/exp_group_id``: one group per exposure group, numbered by its id and in the
    order of the ids. An exposure group whose particles differ in optics values (pixel size,
    box, voltage, Cs, amplitude contrast) is split, with a warning: its first set of values
    keeps the id, the others are numbered after the largest id. Without the field: one group
    per distinct set of values, numbered 1..g.
    """
    values = np.stack(
        [
            psize,
            image_size.astype(np.float64),
            float_field(data, "ctf/accel_kv", path),
            float_field(data, "ctf/cs_mm", path),
            float_field(data, "ctf/amp_contrast", path),
        ],
        axis=1,
    )
    has_exp = "ctf/exp_group_id" in field_names(data)
    if has_exp and data["ctf/exp_group_id"].dtype.kind not in "iu":
        raise InputError(
            path, "ctf/exp_group_id", f"expected integers, got {data['ctf/exp_group_id'].dtype}"
        )
    exp = data["ctf/exp_group_id"].astype(np.int64) if has_exp else np.zeros(len(data), np.int64)
    # Sorted by exposure group first, so the parts of one exposure group are adjacent.
    keys = np.column_stack([exp.astype(np.float64), values])
    unique, group = np.unique(keys, axis=0, return_inverse=True)
    ids = unique[:, 0].astype(np.int64)
    if has_exp:
        number = ids.copy()
        extra = np.flatnonzero(np.r_[False, ids[1:] == ids[:-1]])
        if extra.size:
            number[extra] = ids.max() + 1 + np.arange(extra.size)
            split = ", ".join(
                f"{i} -> {number[ids == i].tolist()}" for i in np.unique(ids[extra]).tolist()
            )
            warn_input(
                path,
                "ctf/exp_group_id",
                "particles of one exposure group differ in pixel size, box size, voltage, Cs or "
                f"amplitude contrast; each is split into one optics group per set of values "
                f"(exposure group -> optics group numbers: {split})",
            )
    else:
        number = np.arange(1, len(unique) + 1, dtype=np.int64)
    optics = OpticsGroups(
        name=np.array([f"opticsGroup{k}" for k in number]),
        pixel_size_angstrom=unique[:, 1],
        image_size=unique[:, 2].astype(np.int64),
        voltage_kv=unique[:, 3],
        spherical_aberration_mm=unique[:, 4],
        amplitude_contrast=unique[:, 5],
        number=number,
    )
    return optics, group.reshape(-1).astype(np.int64)


def _half_sets(data: np.ndarray, path: Path) -> np.ndarray:
    """``(n,)`` RELION half-sets (1, 2) from ``alignments3D/split`` (0, 1); all 0 ("not given")
    when the field is missing, or when it gives every particle the same half-set (the other
    half would be empty; the engine then makes its own random halves), with a warning."""
    if "alignments3D/split" not in field_names(data):
        return np.zeros(len(data), dtype=np.int64)
    split = data["alignments3D/split"]
    if split.dtype.kind not in "iu":
        raise InputError(path, "alignments3D/split", f"expected integers, got {split.dtype}")
    bad = np.flatnonzero(~np.isin(split, (0, 1)))
    if bad.size:  # the engine would replace the file's halves with its own without a word
        raise InputError(
            path,
            "alignments3D/split",
            f"row {bad[0] + 1}: {split[bad[0]]} is not a half-set: expected 0 or 1",
        )
    values = np.unique(split)
    if len(values) == 1:
        warn_input(
            path,
            "alignments3D/split",
            f"gives every particle the same half-set ({values[0]}), which leaves the other "
            "half empty; ignored: cryotorch makes its own random halves",
        )
        return np.zeros(len(data), dtype=np.int64)
    return conventions.split_to_random_subset(split)


def _stack_paths(data: np.ndarray, path: Path) -> np.ndarray:
    """``blob/path`` as ``(n,)`` str; bytes are UTF-8, anything but text is refused."""
    raw = data["blob/path"]
    if raw.dtype.kind == "U":
        return raw.astype(str)
    if raw.dtype.kind != "S":
        raise InputError(path, "blob/path", f"expected paths (text), got {raw.dtype}")
    try:
        return np.char.decode(raw, "utf-8").astype(str)
    except UnicodeDecodeError:
        for row, value in enumerate(raw.tolist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    path, "blob/path", f"row {row + 1}: {value!r} is not a UTF-8 path"
                ) from None
        raise


def _check_alignment_pixel_size(psize: np.ndarray, path: Path) -> None:
    """Refuse an ``alignments3D/psize_A`` that is no pixel size: it turns the shifts (pixels)
    into Å, and 0 or a negative one would zero or flip them without a word."""
    low, high, _, unit, what = RANGES["pixel_size_angstrom"]
    bad = np.flatnonzero((psize <= low) | (psize > high))
    if bad.size:
        raise InputError(
            path,
            "alignments3D/psize_A",
            f"row {bad[0] + 1}: {psize[bad[0]]:g} {unit} is not a plausible {what}: expected "
            f"({low:g}, {high:g}] {unit}",
        )


def read_cs(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    passthrough: str | os.PathLike[str] | None = None,
) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file (optionally merged with its passthrough file).

    Relative ``blob/path`` values resolve against ``data_dir`` (the cryoSPARC project folder)
    when given, else against the file's folder, then the folder above it.
    """
    path = Path(path)
    data = load_cs_array(path)
    if passthrough is not None:
        data = merge_passthrough(data, path, Path(passthrough))
    if len(data) == 0:
        raise InputError(path, None, "the table is empty: expected at least one particle")
    missing = [f for f in REQUIRED_FIELDS if f not in field_names(data)]
    if missing:
        hint = " (is a passthrough file needed?)" if passthrough is None else ""
        if "alignments3D/pose" in missing and not any(
            n.startswith("alignments3D/") for n in field_names(data)
        ):
            hint = (
                ": these particles have no 3D alignment; cryotorch classifies particles with "
                "the poses of a consensus refinement (its particles .cs"
                + (", or its passthrough file)" if passthrough is None else ")")
            )
        raise InputError(path, ", ".join(missing), f"required field(s) missing{hint}")
    check_field_shapes(data, path)

    stacks, root = resolve_stack_paths(
        _stack_paths(data, path),
        path.parent,
        Path(data_dir) if data_dir else None,
        (path.parent.parent,),
    )
    psize = float_field(data, "blob/psize_A", path)
    image_size = _image_size(data, path)
    optics, group = _optics(data, path, psize, image_size)
    has_align_psize = "alignments3D/psize_A" in field_names(data)
    if has_align_psize:
        _check_alignment_pixel_size(float_field(data, "alignments3D/psize_A", path), path)
    shift = (
        float_field(data, "alignments3D/shift", path)
        if "alignments3D/shift" in field_names(data)
        else np.zeros((len(data), 2))
    )
    split = _half_sets(data, path)
    table = ParticleTable(
        image_path=stacks,
        image_index=data["blob/idx"].astype(np.int64),
        rotation=conventions.cryosparc_pose_to_rotation(
            float_field(data, "alignments3D/pose", path)
        ),
        origin_angstrom=conventions.cryosparc_shift_to_origin_angstrom(
            shift,
            float_field(data, "alignments3D/psize_A", path, default=np.nan)
            if has_align_psize
            else psize,
        ),
        defocus_u_angstrom=float_field(data, "ctf/df1_A", path),
        defocus_v_angstrom=float_field(data, "ctf/df2_A", path),
        astigmatism_angle_deg=np.rad2deg(float_field(data, "ctf/df_angle_rad", path)),
        phase_shift_deg=np.rad2deg(float_field(data, "ctf/phase_shift_rad", path, default=0.0)),
        ctf_bfactor=float_field(data, "ctf/bfactor", path, default=0.0),
        ctf_scale=float_field(data, "ctf/scale", path, default=1.0),
        optics_group=group,
        random_subset=split,
        optics=optics,
        source=SourceRecord("cs", path, data, root),
    )
    check_physical_ranges(table, path, CS_NAMES)
    return table
