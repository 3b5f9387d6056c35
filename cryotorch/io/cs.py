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
``alignments3D/split``, ``ctf/exp_group_id`` (exposure group = optics group). A passthrough
file (``J*_passthrough_particles.cs``) is merged by ``uid``: its fields are added where the
main file lacks them.

numpy refuses headers over 10000 characters unless told otherwise; cryoSPARC's 3D
classification and heterogeneous refinement outputs exceed that (a dozen fields per class), so
headers up to :data:`MAX_HEADER_CHARS` are read. numpy parses the header with
``ast.literal_eval`` (no code runs) and still refuses object fields with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from cryotorch import conventions
from cryotorch.errors import InputError, warn_input
from cryotorch.io.atomic import atomic_path
from cryotorch.io.checks import CS_NAMES, check_physical_ranges
from cryotorch.io.paths import resolve_stack_paths, stack_path_for_output
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
# Longest numpy header read (characters); numpy's own default is 10000. A field takes about 50
# characters of header, so this allows tens of thousands of fields.
MAX_HEADER_CHARS = 2**21


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
    if magic != b"\x93NUMPY":
        raise InputError(
            path,
            None,
            f"not a cryoSPARC .cs file: it starts with {magic!r}, not numpy's b'\\x93NUMPY' "
            "(a .cs is a numpy array file; is this a partial download or another format?)",
        )
    try:
        data = np.load(path, allow_pickle=False, max_header_size=MAX_HEADER_CHARS)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise InputError(
                path, None, "has an object (pickled) field; cryotorch never unpickles user files"
            ) from exc
        if "max_header_size" in str(exc):
            raise InputError(
                path,
                None,
                f"numpy header is longer than the {MAX_HEADER_CHARS} characters cryotorch reads; "
                "is this a cryoSPARC .cs file?",
            ) from exc
        raise InputError(path, None, f"not a cryoSPARC .cs (numpy) file ({exc})") from exc
    except Exception as exc:
        raise InputError(path, None, f"not a cryoSPARC .cs (numpy) file ({exc})") from exc
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, None, "not a cryoSPARC .cs file: expected a 1-D structured array")
    if data.dtype.hasobject:  # np.load refuses these already; never let one through
        raise InputError(
            path, None, "has an object (pickled) field; cryotorch never unpickles user files"
        )
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
            _field(data, "ctf/accel_kv", path),
            _field(data, "ctf/cs_mm", path),
            _field(data, "ctf/amp_contrast", path),
        ],
        axis=1,
    )
    has_exp = "ctf/exp_group_id" in data.dtype.names
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
    if "alignments3D/split" not in data.dtype.names:
        return np.zeros(len(data), dtype=np.int64)
    split = data["alignments3D/split"]
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


# Numbers per particle of the fields whose shape matters, as cryoSPARC writes them.
FIELD_SHAPES = {
    "blob/idx": (),
    "blob/shape": (2,),
    "alignments3D/pose": (3,),
    "alignments3D/shift": (2,),
}


def _check_shapes(data: np.ndarray, path: Path) -> None:
    """Refuse fields of the wrong shape or kind, and negative ``blob/idx`` (numpy would read
    the stack's last images through negative indexing)."""
    for name, shape in FIELD_SHAPES.items():
        if name not in data.dtype.names:
            continue
        got = data.dtype.fields[name][0].shape
        if got != shape:
            count = int(np.prod(shape)) if shape else 1
            raise InputError(
                path,
                name,
                f"has {int(np.prod(got)) if got else 1} number(s) per particle {got}, "
                f"expected {count}",
            )
    idx = data["blob/idx"]
    if idx.dtype.kind not in "iu":
        raise InputError(path, "blob/idx", f"expected integers, got {idx.dtype}")
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        raise InputError(
            path, "blob/idx", f"row {bad[0] + 1}: {idx[bad[0]]} is negative (0-based indices)"
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
    data = _load(path)
    if passthrough is not None:
        data = _merge_passthrough(data, path, Path(passthrough))
    if len(data) == 0:
        raise InputError(path, None, "the table is empty: expected at least one particle")
    missing = [f for f in REQUIRED_FIELDS if f not in data.dtype.names]
    if missing:
        hint = " (is a passthrough file needed?)" if passthrough is None else ""
        if "alignments3D/pose" in missing and not any(
            n.startswith("alignments3D/") for n in data.dtype.names
        ):
            hint = (
                ": these particles have no 3D alignment; cryotorch classifies particles with "
                "the poses of a consensus refinement (its particles .cs"
                + (", or its passthrough file)" if passthrough is None else ")")
            )
        raise InputError(path, ", ".join(missing), f"required field(s) missing{hint}")
    _check_shapes(data, path)

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
    optics, group = _optics(data, path, psize, image_size)
    has_align_psize = "alignments3D/psize_A" in data.dtype.names
    shift = (
        _field(data, "alignments3D/shift", path)
        if "alignments3D/shift" in data.dtype.names
        else np.zeros((len(data), 2))
    )
    split = _half_sets(data, path)
    table = ParticleTable(
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
        optics_group=group,
        random_subset=split,
        optics=optics,
        source=SourceRecord("cs", path, data, root),
    )
    check_physical_ranges(table, path, CS_NAMES)
    return table


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: x -> x + k * _GOLDEN is 1:1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array: a bijection that spreads every bit."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)  # uint64 arrays wrap modulo 2^64
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def particle_uids(image_path: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """``(n,)`` uint64 cryoSPARC uids, derived from each particle's identity.

    cryoSPARC draws uids at random; joining two files (``Dataset.union``, passthroughs) relies
    on different particles having different uids. A uid here is a 64-bit hash of the particle:
    blake2b (8 bytes) of the resolved absolute stack path, plus the 0-based ``image_index``
    times an odd constant, through splitmix64. So different particles get different uids in
    any conversion (within one stack always, across stacks but for a ~2^-64 chance), and the
    same particle gets the same uid every time (output is reproducible). A row that repeats an
    earlier row's image (symmetry expansion) is re-mixed with its repeat count. The uids are
    checked nonzero and unique; a clash (vanishingly rare) is re-mixed, deterministically.
    """
    image_index = np.asarray(image_index, dtype=np.int64)
    n = len(image_index)
    paths, code = np.unique(np.asarray(image_path, dtype=str), return_inverse=True)
    code = code.reshape(-1)
    path_hash = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(os.path.realpath(p).encode("utf-8"), digest_size=8).digest(),
                "little",
            )
            for p in paths
        ],
        dtype=np.uint64,
    )
    uid = _splitmix64(path_hash[code] + _GOLDEN * image_index.astype(np.uint64))
    # How many earlier rows show the same image: 0 for the first (usually only) one.
    order = np.lexsort((np.arange(n), image_index, code))  # by image, then by row
    c, i = code[order], image_index[order]
    same = np.r_[False, (c[1:] == c[:-1]) & (i[1:] == i[:-1])]
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    repeat = np.empty(n, dtype=np.uint64)
    repeat[order] = (np.arange(n) - run_start).astype(np.uint64)
    again = repeat > 0
    uid[again] = _splitmix64(uid[again] ^ _splitmix64(repeat[again] * _GOLDEN))
    for _ in range(64):
        clash = np.ones(n, dtype=bool)
        clash[np.unique(uid, return_index=True)[1]] = False  # the first row of each uid is kept
        clash |= uid == 0
        if not clash.any():
            return uid
        uid[clash] = _splitmix64(uid[clash] + _GOLDEN)
    raise RuntimeError("could not make unique particle uids")  # unreachable in practice


def _table_fields(
    table: ParticleTable, output: Path, absolute_paths: bool
) -> dict[str, np.ndarray]:
    """The cryoSPARC fields that describe ``table``."""
    psize = table.pixel_size_angstrom
    stacks = stack_path_for_output(table.image_path, output.parent, absolute_paths)
    size = table.optics.image_size[table.optics_group].astype(np.uint32)
    exp_group = table.optics.number - min(0, int(table.optics.number.min()))  # uint32: >= 0
    fields = {
        # cryoSPARC draws uids at random; ours hash the particle (see particle_uids).
        "uid": particle_uids(table.image_path, table.image_index),
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
        "ctf/exp_group_id": exp_group[table.optics_group].astype(np.uint32),
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
    if not np.isin((1, 2), table.random_subset).all():
        # Not both half-sets: a constant split would tell cryoSPARC that one half is empty.
        del fields["alignments3D/split"]
    return fields


def write_cs(
    table: ParticleTable,
    path: str | os.PathLike[str],
    new_fields: dict[str, np.ndarray] | None = None,
    absolute_paths: bool = True,
) -> None:
    """Write ``table`` as a cryoSPARC ``.cs`` file, atomically.

    When the table was read from a ``.cs`` file, every input field is written back verbatim;
    otherwise the fields are made from the table: ``uid`` from :func:`particle_uids`,
    ``ctf/exp_group_id`` the optics group's ``number``, and no ``alignments3D/split`` when
    the table does not have both half-sets. ``new_fields`` (name -> ``(n, ...)`` array,
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
