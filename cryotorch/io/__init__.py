"""File formats: RELION STAR, cryoSPARC .cs, MRC maps and stacks.

:func:`read_particles` and :func:`write_particles` pick the format from the suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryotorch.errors import InputError
from cryotorch.io.cs import read_cs, write_cs
from cryotorch.io.mrc import ParticleImages, read_map, write_map, write_stack
from cryotorch.io.star import read_star, write_star
from cryotorch.io.star_columns import StarVersion
from cryotorch.particles import ParticleTable

__all__ = [
    "ParticleImages",
    "read_cs",
    "read_map",
    "read_particles",
    "read_star",
    "write_cs",
    "write_map",
    "write_particles",
    "write_stack",
    "write_star",
]


def read_particles(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    passthrough: str | os.PathLike[str] | None = None,
    pixel_size: float | None = None,
) -> ParticleTable:
    """Read a ``.star`` (RELION 3.0/3.1+) or ``.cs`` (cryoSPARC) particle file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        if passthrough is not None:
            raise InputError(path, None, "a passthrough file goes with a .cs file, not a .star")
        return read_star(path, data_dir=data_dir, pixel_size=pixel_size)
    if suffix == ".cs":
        return read_cs(path, data_dir=data_dir, passthrough=passthrough)
    raise InputError(path, None, f"unknown particle file suffix {suffix!r}: expected .star or .cs")


def write_particles(
    table: ParticleTable,
    path: str | os.PathLike[str],
    new_columns: dict[str, np.ndarray] | None = None,
    star_version: StarVersion = "3.1",
    absolute_paths: bool = True,
) -> None:
    """Write ``table`` as ``.star`` or ``.cs`` by the suffix of ``path``, atomically."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        write_star(table, path, new_columns, version=star_version, absolute_paths=absolute_paths)
    elif suffix == ".cs":
        write_cs(table, path, new_columns, absolute_paths=absolute_paths)
    else:
        raise InputError(path, None, f"unknown output suffix {suffix!r}: expected .star or .cs")
