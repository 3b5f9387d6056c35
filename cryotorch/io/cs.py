"""cryoSPARC ``.cs`` particle files, read into and written from a ParticleTable.

A ``.cs`` file is a numpy structured array saved with ``np.save``. It is read with
``np.load(allow_pickle=False)``: nothing from a user's file is ever unpickled, and a file with
an object (pickled) field is refused. We chose plain numpy over ``cryosparc-tools``'s
``Dataset`` (BSD-3) because it needs nothing beyond numpy, reads lazily enough for our use,
and lets us give our own error messages; ``cryosparc-tools`` is used in the tests as an
outside reader and writer of the format.

Fields used (see :mod:`cryotorch.conventions` for the conversions): ``blob/path`` (a leading
``>`` is dropped), ``blob/idx`` (0-based), ``blob/psize_A``, ``blob/shape``, ``ctf/*``,
``alignments3D/pose`` (rotation vector, radians), ``alignments3D/shift`` (pixels),
``alignments3D/split``. A passthrough file (``J*_passthrough_particles.cs``) is merged by
``uid``: its fields are added where the main file lacks them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryotorch import conventions
from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path
from cryotorch.io.paths import resolve_stack_paths, stack_path_for_output
from cryotorch.particles import OpticsGroups, ParticleTable, SourceRecord

__all__ = ["add_fields", "read_cs", "write_cs"]

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


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x95CSDAT":
        raise InputError(
            path,
            None,
            "is in cryoSPARC's compressed CSDAT layout; save it as a numpy .cs first "
            "(cryosparc-tools: `Dataset.load(p).save(q)` writes the numpy layout)",
        )
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(
                path, None, "has an object (pickled) field; cryotorch never unpickles user files"
            ) from exc
        raise InputError(path, None, f"not a cryoSPARC .cs (numpy) file ({exc})") from exc
    except Exception as exc:
        raise InputError(path, None, f"not a cryoSPARC .cs (numpy) file ({exc})") from exc
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, None, "not a cryoSPARC .cs file: expected a 1-D structured array")
    return data


def add_fields(data: np.ndarray, new: dict[str, np.ndarray]) -> np.ndarray:
    """A copy of structured array ``data`` with fields ``new`` added or replaced (same rows)."""
    new = {k: np.asarray(v) for k, v in new.items()}
    descr = [(n, data.dtype.fields[n][0]) for n in data.dtype.names if n not in new]
    descr += [(k, v.dtype, v.shape[1:]) for k, v in new.items()]
    out = np.empty(len(data), dtype=descr)
    for name in data.dtype.names:
        if name not in new:
            out[name] = data[name]
    for k, v in new.items():
        out[k] = v
    return out


def _merge_passthrough(data: np.ndarray, path: Path, passthrough: Path) -> np.ndarray:
    extra = _load(passthrough)
    for f, p in (("uid", path), ("uid", passthrough)):
        if f not in (data if p == path else extra).dtype.names:
            raise InputError(p, "uid", "needed to merge a passthrough file, but missing")
    order = np.argsort(extra["uid"])
    pos = np.searchsorted(extra["uid"], data["uid"], sorter=order).clip(0, len(extra) - 1)
    rows = order[pos]
    missing = np.flatnonzero(extra["uid"][rows] != data["uid"])
    if missing.size:
        raise InputError(
            passthrough,
            "uid",
            f"has no row for uid {data['uid'][missing[0]]} of {path} (row {missing[0] + 1})",
        )
    fields = {n: extra[n][rows] for n in extra.dtype.names if n not in data.dtype.names}
    return add_fields(data, fields) if fields else data


def _field(data: np.ndarray, name: str, path: Path, default: float | None = None) -> np.ndarray:
    if name not in data.dtype.names:
        if default is None:
            raise InputError(path, name, "required field is missing")
        return np.full(len(data), default, dtype=np.float64)
    values = data[name].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))
    if bad.size:
        raise InputError(
            path, name, f"row {bad[0] + 1}: expected finite numbers, got {data[name][bad[0]]}"
        )
    return values


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
    data = _load(path)
    if passthrough is not None:
        data = _merge_passthrough(data, path, Path(passthrough))
    if len(data) == 0:
        raise InputError(path, None, "the table is empty: expected at least one particle")
    missing = [f for f in REQUIRED_FIELDS if f not in data.dtype.names]
    if missing:
        hint = " (is a passthrough file needed?)" if passthrough is None else ""
        raise InputError(path, ", ".join(missing), f"required field(s) missing{hint}")

    raw_paths = (
        np.char.decode(data["blob/path"], "utf-8")
        if data["blob/path"].dtype.kind == "S"
        else data["blob/path"]
    )
    stacks, root = resolve_stack_paths(
        np.asarray(raw_paths, dtype=str),
        path.parent,
        Path(data_dir) if data_dir else None,
        (path.parent.parent,),
    )
    psize = _field(data, "blob/psize_A", path)
    image_size = (
        data["blob/shape"][:, -1].astype(np.int64)
        if "blob/shape" in data.dtype.names
        else np.zeros(len(data), np.int64)
    )
    optics_values = np.stack(
        [
            psize,
            image_size.astype(np.float64),
            _field(data, "ctf/accel_kv", path),
            _field(data, "ctf/cs_mm", path),
            _field(data, "ctf/amp_contrast", path),
        ],
        axis=1,
    )
    unique, group = np.unique(optics_values, axis=0, return_inverse=True)
    optics = OpticsGroups(
        name=np.array([f"opticsGroup{g + 1}" for g in range(len(unique))]),
        pixel_size_angstrom=unique[:, 0],
        image_size=unique[:, 1].astype(np.int64),
        voltage_kv=unique[:, 2],
        spherical_aberration_mm=unique[:, 3],
        amplitude_contrast=unique[:, 4],
    )
    has_align_psize = "alignments3D/psize_A" in data.dtype.names
    shift = (
        _field(data, "alignments3D/shift", path)
        if "alignments3D/shift" in data.dtype.names
        else np.zeros((len(data), 2))
    )
    split = (
        conventions.split_to_random_subset(data["alignments3D/split"])
        if "alignments3D/split" in data.dtype.names
        else np.zeros(len(data), dtype=np.int64)
    )
    return ParticleTable(
        image_path=stacks,
        image_index=data["blob/idx"].astype(np.int64),
        rotation=conventions.cryosparc_pose_to_rotation(_field(data, "alignments3D/pose", path)),
        origin_angstrom=conventions.cryosparc_shift_to_origin_angstrom(
            shift,
            _field(data, "alignments3D/psize_A", path, default=np.nan)
            if has_align_psize
            else psize,
        ),
        defocus_u_angstrom=_field(data, "ctf/df1_A", path),
        defocus_v_angstrom=_field(data, "ctf/df2_A", path),
        astigmatism_angle_deg=np.rad2deg(_field(data, "ctf/df_angle_rad", path)),
        phase_shift_deg=np.rad2deg(_field(data, "ctf/phase_shift_rad", path, default=0.0)),
        ctf_bfactor=_field(data, "ctf/bfactor", path, default=0.0),
        ctf_scale=_field(data, "ctf/scale", path, default=1.0),
        optics_group=group.reshape(-1).astype(np.int64),
        random_subset=split,
        optics=optics,
        source=SourceRecord("cs", path, data, root),
    )


def _table_fields(
    table: ParticleTable, output: Path, absolute_paths: bool
) -> dict[str, np.ndarray]:
    """The cryoSPARC fields that describe ``table``."""
    n = len(table)
    psize = table.pixel_size_angstrom
    stacks = stack_path_for_output(table.image_path, output.parent, absolute_paths)
    size = table.optics.image_size[table.optics_group].astype(np.uint32)
    fields = {
        # cryoSPARC uids are random 64-bit integers; these are seeded so output is reproducible.
        "uid": np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.uint64),
        "blob/path": np.char.encode(stacks, "utf-8"),
        "blob/idx": table.image_index.astype(np.uint32),
        "blob/shape": np.stack([size, size], axis=1),
        "blob/psize_A": psize.astype(np.float32),
        "ctf/accel_kv": table.voltage_kv.astype(np.float32),
        "ctf/cs_mm": table.spherical_aberration_mm.astype(np.float32),
        "ctf/amp_contrast": table.amplitude_contrast.astype(np.float32),
        "ctf/df1_A": table.defocus_u_angstrom.astype(np.float32),
        "ctf/df2_A": table.defocus_v_angstrom.astype(np.float32),
        "ctf/df_angle_rad": np.deg2rad(table.astigmatism_angle_deg).astype(np.float32),
        "ctf/phase_shift_rad": np.deg2rad(table.phase_shift_deg).astype(np.float32),
        "ctf/scale": table.ctf_scale.astype(np.float32),
        "ctf/bfactor": table.ctf_bfactor.astype(np.float32),
        "ctf/exp_group_id": table.optics_group.astype(np.uint32),
        "alignments3D/split": conventions.random_subset_to_split(table.random_subset).astype(
            np.uint32
        ),
        "alignments3D/shift": conventions.origin_angstrom_to_cryosparc_shift(  # pixels of psize_A
            table.origin_angstrom, psize
        ).astype(np.float32),
        "alignments3D/pose": conventions.rotation_to_cryosparc_pose(table.rotation).astype(
            np.float32
        ),
        "alignments3D/psize_A": psize.astype(np.float32),
    }
    return fields


def write_cs(
    table: ParticleTable,
    path: str | os.PathLike[str],
    new_fields: dict[str, np.ndarray] | None = None,
    absolute_paths: bool = True,
) -> None:
    """Write ``table`` as a cryoSPARC ``.cs`` file, atomically.

    When the table was read from a ``.cs`` file, every input field is written back verbatim;
    otherwise the fields are made from the table. ``new_fields`` (name -> ``(n, ...)`` array,
    e.g. ``alignments3D/class``) are added or replace existing ones.
    """
    path = Path(path)
    if table.source is not None and table.source.format == "cs":
        data = table.source.particles
        if not table.source.keeps_paths(path):
            stacks = stack_path_for_output(table.image_path, path.parent, absolute_paths)
            data = add_fields(data, {"blob/path": np.char.encode(stacks, "utf-8")})
    else:
        data = np.empty(len(table), dtype=[])
        data = add_fields(data, _table_fields(table, path, absolute_paths))
    if new_fields:
        data = add_fields(data, new_fields)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, data, allow_pickle=False)
