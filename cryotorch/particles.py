"""The in-memory particle table: one layout, explicit units, whatever file it came from.

A RELION ``.star`` and a cryoSPARC ``.cs`` describing the same particles load to the same
:class:`ParticleTable` (see :mod:`cryotorch.conventions` for the conventions it uses). The table
also keeps the file's own rows (:class:`SourceRecord`) so that writing back to the same format
keeps every input column, every optics field and the row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

__all__ = [
    "ImageSource",
    "OpticsGroups",
    "ParticleTable",
    "ReferenceFrame",
    "SourceRecord",
    "reference_frame",
]


@dataclass(frozen=True)
class OpticsGroups:
    """Per optics group values, shape ``(g,)`` each (RELION's ``data_optics`` block).

    ``image_size`` is the box edge in pixels (0 where the file does not say; the stack header
    then gives it). ``name`` is RELION's ``rlnOpticsGroupName``. ``number`` ``(g,)`` int64 is
    the file's own number of each group, distinct: RELION 3.1's ``rlnOpticsGroup``, cryoSPARC's
    ``ctf/exp_group_id`` (may be 0), ``1..g`` for groups made up by the reader (RELION 3.0, a
    ``.cs`` without exposure groups) and by default. Particles refer to groups by row
    (``ParticleTable.optics_group``), never by number.
    """

    name: np.ndarray
    pixel_size_angstrom: np.ndarray
    image_size: np.ndarray
    voltage_kv: np.ndarray
    spherical_aberration_mm: np.ndarray
    amplitude_contrast: np.ndarray
    number: np.ndarray | None = None  # always an array after construction

    def __post_init__(self) -> None:
        g = len(self.pixel_size_angstrom)
        number = (
            np.arange(1, g + 1, dtype=np.int64)
            if self.number is None
            else np.asarray(self.number, dtype=np.int64)
        )
        if number.shape != (g,):
            raise ValueError(f"OpticsGroups.number has shape {number.shape}, expected ({g},)")
        if len(np.unique(number)) != g:
            raise ValueError(f"OpticsGroups.number has repeated values: {number.tolist()}")
        object.__setattr__(self, "number", number)

    def __len__(self) -> int:
        return len(self.pixel_size_angstrom)


@dataclass(frozen=True)
class SourceRecord:
    """The rows of the file a table was read from, kept to write them back unchanged.

    ``particles`` is a DataFrame (STAR) or a numpy structured array (``.cs``), in table order;
    ``optics`` is the STAR ``data_optics`` block (``None`` for RELION 3.0 and ``.cs``).
    ``stack_root`` is the folder the file's relative stack paths resolved against: the paths
    can be copied verbatim only into a file in that folder.
    """

    format: Literal["star3.1", "star3.0", "cs"]
    path: Path
    particles: pd.DataFrame | np.ndarray
    stack_root: Path
    optics: pd.DataFrame | None = None

    def keeps_paths(self, output: Path) -> bool:
        """Whether stack paths copied verbatim into ``output`` still name the same files."""
        return Path(output).parent.resolve() == self.stack_root.resolve()


@dataclass(frozen=True)
class ParticleTable:
    """Particles with known poses and CTFs, shapes ``(n, ...)``, units in the names.

    Attributes
    ----------
    image_path
        ``(n,)`` str: absolute path of each particle's stack file.
    image_index
        ``(n,)`` int64: 0-based index of the image in its stack.
    rotation
        ``(n, 3, 3)`` float64: RELION's matrix ``A`` (reference -> particle frame).
    origin_angstrom
        ``(n, 2)`` float64: RELION origin ``(x, y)`` in Å; the particle centre is at
        ``box_centre - origin / pixel_size``.
    defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_deg
        ``(n,)`` float64: RELION's rlnDefocusU, rlnDefocusV (Å) and rlnDefocusAngle (degrees).
    phase_shift_deg, ctf_bfactor, ctf_scale
        ``(n,)`` float64: phase-plate shift (degrees), CTF B-factor (Å²), CTF scale factor.
    optics_group
        ``(n,)`` int64: 0-based row of :attr:`optics`.
    random_subset
        ``(n,)`` int64: half-set 1 or 2 (RELION convention), 0 where the file gives none.
    optics
        Per-group optics values.
    source
        The file's own rows, or ``None`` for a table built in memory.
    """

    image_path: np.ndarray
    image_index: np.ndarray
    rotation: np.ndarray
    origin_angstrom: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    ctf_bfactor: np.ndarray
    ctf_scale: np.ndarray
    optics_group: np.ndarray
    random_subset: np.ndarray
    optics: OpticsGroups
    source: SourceRecord | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = len(self.image_index)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and len(value) != n:
                raise ValueError(f"ParticleTable.{f.name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.image_index)

    # Per-particle views of the optics values -----------------------------------------------
    @property
    def pixel_size_angstrom(self) -> np.ndarray:
        """``(n,)`` pixel size of each particle's image, Å."""
        return self.optics.pixel_size_angstrom[self.optics_group]

    @property
    def voltage_kv(self) -> np.ndarray:
        """``(n,)`` acceleration voltage, kV."""
        return self.optics.voltage_kv[self.optics_group]

    @property
    def spherical_aberration_mm(self) -> np.ndarray:
        """``(n,)`` spherical aberration Cs, mm."""
        return self.optics.spherical_aberration_mm[self.optics_group]

    @property
    def amplitude_contrast(self) -> np.ndarray:
        """``(n,)`` amplitude contrast fraction."""
        return self.optics.amplitude_contrast[self.optics_group]

    def take(self, indices: np.ndarray) -> ParticleTable:
        """The sub-table of rows ``indices`` (any order), source rows included."""
        idx = np.asarray(indices, dtype=np.int64)
        columns = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        source = self.source
        if source is not None:
            rows = source.particles
            rows = (
                rows.iloc[idx].reset_index(drop=True)
                if isinstance(rows, pd.DataFrame)
                else rows[idx]
            )
            source = replace(source, particles=rows)
        return replace(self, source=source, **columns)


@dataclass(frozen=True)
class ReferenceFrame:
    """The box and pixel size of a run's maps: those of one optics group, onto whose Fourier
    grid every group's images are resampled (:mod:`cryotorch.physics.resampling`).

    ``box`` (pixels) and ``pixel_size_angstrom`` (Å) are the group's; ``optics_group`` its
    0-based row of :attr:`ParticleTable.optics`; ``number`` its number in the file.
    """

    box: int
    pixel_size_angstrom: float
    optics_group: int
    number: int

    @property
    def extent_angstrom(self) -> float:
        """The box's physical edge, ``box · pixel_size_angstrom`` Å."""
        return self.box * self.pixel_size_angstrom

    def describe(self) -> str:
        """``"box 80 at 1.200 Å (optics group 1)"``, for messages."""
        return f"box {self.box} at {self.pixel_size_angstrom:.3f} Å (optics group {self.number})"


def reference_frame(table: ParticleTable) -> ReferenceFrame:
    """RELION's frame: the box and pixel size of the first optics group of the file, or, if
    that group has no particles and no box size, of the first group that has particles.
    A ValueError if that group's box is not known (``image_size`` 0: read the table through
    :class:`cryotorch.io.ParticleImages`, which takes it from the stacks)."""
    optics = table.optics
    used = np.unique(table.optics_group)
    group = 0 if optics.image_size[0] > 0 or len(used) == 0 or used[0] == 0 else int(used[0])
    box = int(optics.image_size[group])
    assert optics.number is not None  # OpticsGroups.__post_init__ sets it
    if box <= 0:
        raise ValueError(
            f"optics group {optics.number[group]} has no box size (image_size 0): read the "
            "particles through ParticleImages, which takes it from the stacks"
        )
    return ReferenceFrame(
        box=box,
        pixel_size_angstrom=float(optics.pixel_size_angstrom[group]),
        optics_group=group,
        number=int(optics.number[group]),
    )


class ImageSource(Protocol):
    """What the batches and reconstructions read images from: the particles' ``table`` (whose
    ``optics.image_size`` gives each optics group's box) and ``read(rows) -> (b, d, d)``
    float32 images of table rows that share one box ``d``. :class:`cryotorch.io.ParticleImages`
    (lazily read stacks) is one; an in-memory array of simulated images can be another. The
    engine and the physics need no file reading."""

    table: ParticleTable

    def read(self, rows: np.ndarray) -> np.ndarray: ...
