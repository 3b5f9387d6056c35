"""A cryoSPARC ``.cs`` file as a numpy structured array: loaded safely, its fields checked and
read as numbers, fields added, and a passthrough file merged in.

A ``.cs`` file is a numpy structured array saved with ``np.save``. It is read with
``np.load(allow_pickle=False)``: nothing from a user's file is ever unpickled, and a file with
an object (pickled) field is refused.

numpy refuses headers over 10000 characters unless told otherwise; cryoSPARC's 3D
classification and heterogeneous refinement outputs exceed that (a dozen fields per class), so
headers up to :data:`MAX_HEADER_CHARS` are read. numpy parses the header with
``ast.literal_eval`` (no code runs) and still refuses object fields with ``allow_pickle=False``.

A passthrough file (``J*_passthrough_particles.cs``) is merged by ``uid``: its fields are added
where the main file lacks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryotorch.errors import InputError

__all__ = [
    "FIELD_SHAPES",
    "MAX_HEADER_CHARS",
    "add_fields",
    "check_field_shapes",
    "field_names",
    "float_field",
    "load_cs_array",
    "merge_passthrough",
]

# Longest numpy header read (characters); numpy's own default is 10000. A field takes about 50
# characters of header, so this allows tens of thousands of fields.
MAX_HEADER_CHARS = 2**21


def load_cs_array(path: Path) -> np.ndarray:
    """The ``(n,)`` structured array of the numpy ``.cs`` file ``path``; anything else (a
    CSDAT file, another format, an object field, a header too long) is an InputError."""
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


def field_names(data: np.ndarray) -> tuple[str, ...]:
    """The field names of structured array ``data``: every array here is one, as
    :func:`load_cs_array` refuses any other (numpy types ``dtype.names`` as optional)."""
    names = data.dtype.names
    assert names is not None, "expected a structured array"
    return names


def add_fields(data: np.ndarray, new: dict[str, np.ndarray]) -> np.ndarray:
    """A copy of structured array ``data`` with fields ``new`` added or replaced (same rows)."""
    new = {k: np.asarray(v) for k, v in new.items()}
    descr: list[tuple[str, np.dtype] | tuple[str, np.dtype, tuple[int, ...]]]
    descr = [(n, data.dtype[n]) for n in field_names(data) if n not in new]
    descr += [(k, v.dtype, v.shape[1:]) for k, v in new.items()]
    out = np.empty(len(data), dtype=descr)
    for name in field_names(data):
        if name not in new:
            out[name] = data[name]
    for k, v in new.items():
        out[k] = v
    return out


def merge_passthrough(data: np.ndarray, path: Path, passthrough: Path) -> np.ndarray:
    """``data`` (read from ``path``) with the fields of file ``passthrough`` that it lacks,
    matched by ``uid``."""
    extra = load_cs_array(passthrough)
    for f, p in (("uid", path), ("uid", passthrough)):
        if f not in field_names(data if p == path else extra):
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
    fields = {n: extra[n][rows] for n in field_names(extra) if n not in field_names(data)}
    return add_fields(data, fields) if fields else data


def float_field(
    data: np.ndarray, name: str, path: Path, default: float | None = None
) -> np.ndarray:
    """Field ``name`` as float64 (``(n, ...)``), or ``default`` where it is missing; an
    InputError names the first row with a number that is not finite."""
    if name not in field_names(data):
        if default is None:
            raise InputError(path, name, "required field is missing")
        return np.full(len(data), default, dtype=np.float64)
    dtype = data.dtype[name].base
    if dtype.kind not in "iuf":  # numpy would parse text, drop imaginary parts, take bools
        raise InputError(path, name, f"expected numbers, got values of dtype {dtype}")
    values = data[name].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))
    if bad.size:
        raise InputError(
            path, name, f"row {bad[0] + 1}: expected finite numbers, got {data[name][bad[0]]}"
        )
    return values


# Numbers per particle of the fields cryotorch reads, as cryoSPARC writes them.
FIELD_SHAPES = {
    "blob/path": (),
    "blob/idx": (),
    "blob/shape": (2,),
    "blob/psize_A": (),
    "ctf/accel_kv": (),
    "ctf/cs_mm": (),
    "ctf/amp_contrast": (),
    "ctf/df1_A": (),
    "ctf/df2_A": (),
    "ctf/df_angle_rad": (),
    "ctf/phase_shift_rad": (),
    "ctf/bfactor": (),
    "ctf/scale": (),
    "ctf/exp_group_id": (),
    "alignments3D/pose": (3,),
    "alignments3D/shift": (2,),
    "alignments3D/psize_A": (),
    "alignments3D/split": (),
}


def check_field_shapes(data: np.ndarray, path: Path) -> None:
    """Refuse fields of the wrong shape or kind, and negative ``blob/idx`` (numpy would read
    the stack's last images through negative indexing) or ones an int64 does not hold."""
    for name, shape in FIELD_SHAPES.items():
        if name not in field_names(data):
            continue
        got = data.dtype[name].shape
        if got != shape:
            count = int(np.prod(shape)) if shape else 1
            what = "path(s)" if name == "blob/path" else "number(s)"
            raise InputError(
                path,
                name,
                f"has {int(np.prod(got)) if got else 1} {what} per particle (shape {got}), "
                f"expected {count} (shape {shape})",
            )
    idx = data["blob/idx"]
    if idx.dtype.kind not in "iu":
        raise InputError(path, "blob/idx", f"expected integers, got {idx.dtype}")
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        raise InputError(
            path, "blob/idx", f"row {bad[0] + 1}: {idx[bad[0]]} is negative (0-based indices)"
        )
    bad = np.flatnonzero(idx > 2**53)  # as int64, 2**64 - 1 would be -1: the last image
    if bad.size:
        raise InputError(
            path, "blob/idx", f"row {bad[0] + 1}: {idx[bad[0]]} is too large for an image index"
        )
