"""Writing a ParticleTable as a cryoSPARC ``.cs`` file (a numpy structured array)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryotorch import conventions
from cryotorch.io.atomic import atomic_path
from cryotorch.io.cs_arrays import add_fields
from cryotorch.io.cs_uids import particle_uids
from cryotorch.io.paths import stack_path_for_output
from cryotorch.particles import ParticleTable

__all__ = ["write_cs"]


def _table_fields(
    table: ParticleTable, output: Path, absolute_paths: bool
) -> dict[str, np.ndarray]:
    """The cryoSPARC fields that describe ``table``."""
    psize = table.pixel_size_angstrom
    stacks = stack_path_for_output(table.image_path, output.parent, absolute_paths)
    size = table.optics.image_size[table.optics_group].astype(np.uint32)
    assert table.optics.number is not None  # OpticsGroups.__post_init__ always sets it
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
