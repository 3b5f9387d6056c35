"""Lazily read particle images of a ParticleTable, with every stack header checked once.

:class:`ParticleImages` memory-maps each stack file (a few at a time, :class:`StackMap`),
reads any list of particles grouped per stack file with one vectorised gather each, and never
loads a whole stack, so stacks larger than memory work. After each batch it tells the kernel
it no longer needs the mapped pages (``MADV_DONTNEED``), so the resident memory stays that of
one batch, however much of a stack has been read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from cryotorch.errors import InputError, warn_input
from cryotorch.io.mrc_header import open_mrc
from cryotorch.io.stack_map import StackMap
from cryotorch.particles import ParticleTable

__all__ = [
    "MAX_PIXEL_VALUE",
    "PIXEL_SIZE_RTOL",
    "UNSET_PIXEL_SIZES",
    "ParticleImages",
    "with_image_sizes",
]

PIXEL_SIZE_RTOL = 0.01
# Largest pixel magnitude read: raw counts and normalised images lie far below; squares of
# values past it overflow float32 in the likelihood.
MAX_PIXEL_VALUE = 1e10
# Header pixel sizes that mean "not set": 0, and 1.0 (many writers' default).
UNSET_PIXEL_SIZES = (0.0, 1.0)


def _table_file(table: ParticleTable) -> str:
    """The particle file a table came from, for messages."""
    return str(table.source.path) if table.source is not None else "particle table"


def _image_fields(table: ParticleTable) -> tuple[str, str]:
    """The file's own names for a particle's stack and its index in the stack."""
    if table.source is not None and table.source.format == "cs":
        return "blob/path", "blob/idx"
    return "rlnImageName", "rlnImageName"


def _image_number(table: ParticleTable, row: int) -> str:
    """Row ``row``'s image as the file numbers it: 0-based ``blob/idx``, 1-based in STAR."""
    if table.source is not None and table.source.format == "cs":
        return f"blob/idx {table.image_index[row]}"
    return f"image {table.image_index[row] + 1}"


def _open_stack(table: ParticleTable, stack: Path, row: int) -> mrcfile.mrcfile.MrcFile:
    """The header of ``stack``, the stack of ``table``'s row ``row`` (0-based); an InputError
    about the stack also names the particle file's row that refers to it."""
    try:
        return open_mrc(stack, header_only=True)
    except InputError as exc:
        raise InputError(
            exc.file,
            exc.field,
            f"{exc.problem} (the stack of {_table_file(table)} row {row + 1}, "
            f"{_image_fields(table)[0]})",
        ) from exc


def with_image_sizes(table: ParticleTable, box: int | np.ndarray | None = None) -> ParticleTable:
    """``table`` with every optics group's box (``image_size`` 0: not given by the file) set:
    to ``box`` when given (an int for every such group, or ``(g,)`` per group, as the stacks
    say), else from the header of the group's first stack. A stack that must be opened and
    does not exist is an InputError."""
    sizes = table.optics.image_size.copy()
    missing = np.flatnonzero(sizes == 0)
    if missing.size == 0:
        return table
    for group in missing:
        rows = np.flatnonzero(table.optics_group == group)
        if rows.size == 0:
            continue
        if box is None:
            stack = Path(table.image_path[rows[0]])
            if not stack.is_file():
                assert table.optics.number is not None  # OpticsGroups.__post_init__ sets it
                raise InputError(
                    _table_file(table),
                    _image_fields(table)[0],
                    f"row {rows[0] + 1}: stack file {stack} does not exist, and the file gives "
                    f"no box size for optics group {table.optics.number[group]}",
                )
            with _open_stack(table, stack, int(rows[0])) as mrc:
                sizes[group] = int(mrc.header.nx)
        else:
            sizes[group] = box if np.isscalar(box) else np.asarray(box)[group]
    return replace(table, optics=replace(table.optics, image_size=sizes))


class ParticleImages:
    """Lazy reader of a table's particle images.

    Opening checks every stack header once: the file exists, the MRC mode is supported, every
    index is inside the stack, the images are square, their size matches the optics group
    (every stack of a group has the group's box; groups may differ, as RELION 3.1 allows), the
    header's pixel size agrees with the table's within 1 %, and every origin lies inside its
    particle's box. Reading checks each batch for NaN/Inf.

    A header pixel size of 0 or 1.0 Å is taken as "not set" (1.0 is many writers' default; RELION
    ignores the header pixel size of particle stacks altogether): the table's is used, with a
    one-line warning naming the first such stack. ``check_pixel_size=False`` trusts the
    table's pixel size whatever the headers say.

    :attr:`table` is the table given, with the box of every optics group that did not give one
    (RELION 3.0, 3.1 without ``rlnImageSize``) taken from its stacks' headers;
    :attr:`image_sizes` ``(g,)`` those boxes, :attr:`image_shape` the one shape of all images
    (where the groups share one box).

    Parameters
    ----------
    table
        The particles; ``table.source.path`` is named in errors about the table.
    max_open
        How many stack files to keep memory-mapped at once (least recently used are closed).
    check_pixel_size
        Refuse stacks whose header pixel size disagrees with the table's.
    """

    def __init__(self, table: ParticleTable, max_open: int = 64, check_pixel_size: bool = True):
        self.table = table
        self.max_open = max_open
        codes, uniques = pd.factorize(pd.Series(table.image_path, dtype=str))
        self._codes = codes.astype(np.int64)
        self._stacks = [Path(u) for u in uniques]
        self._open_maps: OrderedDict[int, StackMap] = OrderedDict()
        self.table = with_image_sizes(table, self._check_headers(check_pixel_size))
        self._check_origins()

    @property
    def image_sizes(self) -> np.ndarray:
        """``(g,)`` int64: the box of each optics group's images, pixels (0 for a group without
        particles whose box the file does not give)."""
        return self.table.optics.image_size

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(d, d)``: the shape of every image, where all the particles' optics groups share
        one box; a ValueError where they do not (:attr:`image_sizes` gives each group's)."""
        sizes = np.unique(self.image_sizes[np.unique(self.table.optics_group)])
        if len(sizes) != 1:
            raise ValueError(
                f"the optics groups have images of different boxes {sizes.tolist()}: "
                "see image_sizes for each group's"
            )
        return int(sizes[0]), int(sizes[0])

    @property
    def _table_file(self) -> str:
        return _table_file(self.table)

    def _check_headers(self, check_pixel_size: bool) -> np.ndarray:
        """Check every stack's header (see the class's docstring); the box ``(g,)`` of each
        optics group, as the file gives it or, where it does not, as its stacks have it."""
        path_field, index_field = _image_fields(self.table)
        max_index = np.zeros(len(self._stacks), dtype=np.int64)
        np.maximum.at(max_index, self._codes, self.table.image_index)
        first_row = np.full(len(self._stacks), len(self.table), dtype=np.int64)
        np.minimum.at(first_row, self._codes, np.arange(len(self.table)))
        # Each (stack, optics group) pair of the table and its first row, sorted by stack.
        n_groups = len(self.table.optics)
        pairs, pair_row = np.unique(
            self._codes * n_groups + self.table.optics_group, return_index=True
        )
        pair_code, pair_group = pairs // n_groups, pairs % n_groups
        sizes = self.table.optics.image_size.astype(np.int64)  # (g,), 0: not given
        given = sizes > 0
        unset: list[tuple[Path, float]] = []  # stacks whose header pixel size means "not set"
        for code, stack in enumerate(self._stacks):
            row = int(first_row[code])
            if not stack.is_file():
                raise InputError(
                    self._table_file,
                    path_field,
                    f"row {row + 1}: stack file {stack} does not exist (for stack paths "
                    "relative to another folder, give it: cryotorch-convert --data-dir, "
                    "cryotorch-classify data.data_dir)",
                )
            with _open_stack(self.table, stack, row) as mrc:
                h = mrc.header
                n_images, ny, nx = int(h.nz), int(h.ny), int(h.nx)
                header_psize = float(mrc.voxel_size.x)
            if max_index[code] >= n_images:
                bad = np.flatnonzero((self._codes == code) & (self.table.image_index >= n_images))[
                    0
                ]
                raise InputError(
                    self._table_file,
                    index_field,
                    f"row {bad + 1}: {_image_number(self.table, bad)} is past the end of "
                    f"{stack}, which holds {n_images} images",
                )
            if nx != ny:
                raise InputError(
                    stack,
                    "header.nx/ny",
                    f"images are {nx}x{ny}: expected square images ({self._table_file}, row "
                    f"{row + 1})",
                )
            # Every optics group of the stack's particles, not only its first particle's.
            lo, hi = np.searchsorted(pair_code, [code, code + 1])
            for group, row in zip(pair_group[lo:hi], pair_row[lo:hi], strict=True):
                self._check_box(stack, nx, int(group), int(row), sizes, bool(given[group]))
                psize = float(self.table.optics.pixel_size_angstrom[group])
                agrees = abs(header_psize - psize) <= PIXEL_SIZE_RTOL * psize
                if check_pixel_size and not agrees and header_psize in UNSET_PIXEL_SIZES:
                    unset.append((stack, header_psize))
                elif check_pixel_size and not agrees:
                    raise InputError(
                        stack,
                        "header.voxel_size",
                        f"pixel size {header_psize:.4f} Å disagrees with {psize:.4f} Å in "
                        f"{self._table_file} (row {row + 1}; check the files; to use the "
                        "particle file's pixel size, as RELION does: cryotorch-convert "
                        "--ignore-stack-pixel-size, cryotorch-classify "
                        "data.ignore_stack_pixel_size=true)",
                    )
        if unset:
            unset = list(dict.fromkeys(unset))  # a stack of several groups, once
            (stack, header_psize), others = unset[0], len(unset) - 1
            more = f" and {others} other stack(s)" if others else ""
            usual = "'not set'" if header_psize == 0 else "the usual value for 'not set'"
            warn_input(
                stack,
                "header.voxel_size",
                f"pixel size {header_psize:.1f} Å{more}, {usual}; using "
                f"{self._table_file}'s pixel size",
            )
        return sizes

    def _check_box(
        self, stack: Path, box: int, group: int, row: int, sizes: np.ndarray, given: bool
    ) -> None:
        """Refuse images of ``box`` pixels in ``stack`` (holding particle ``row``, 0-based,
        of optics group row ``group``) unless the group's box ``sizes[group]`` is that; a box
        the file does not give (``given`` false) is set by the group's first stack."""
        expected = int(sizes[group])
        if expected == 0:
            sizes[group] = box
            return
        if box == expected:
            return
        assert self.table.optics.number is not None  # OpticsGroups sets it
        number = self.table.optics.number[group]
        if given:
            said = (
                "blob/shape"
                if _image_fields(self.table)[0] == "blob/path"
                else f"rlnImageSize of optics group {number}"
            )
            problem = f"the table's optics group says {expected} ({said} in {self._table_file}"
        else:
            problem = (
                f"other stacks of optics group {number} hold {expected}x{expected} images "
                f"(one box per optics group; {self._table_file}"
            )
        raise InputError(
            stack, "header.nx/ny", f"images are {box}x{box}, {problem}, row {row + 1})"
        )

    def _check_origins(self) -> None:
        """Refuse an origin (shift) longer than its particle's box: it would lie outside."""
        box = self.table.optics.image_size[self.table.optics_group]  # (n,)
        extent = box * self.table.pixel_size_angstrom
        bad = np.flatnonzero((np.abs(self.table.origin_angstrom) > extent[:, None]).any(axis=1))
        if bad.size:
            row = int(bad[0])
            fmt = self.table.source.format if self.table.source is not None else ""
            field = {"cs": "alignments3D/shift", "star3.0": "rlnOriginX/Y"}.get(
                fmt, "rlnOriginXAngst/YAngst"
            )
            raise InputError(
                self._table_file,
                field,
                f"row {row + 1}: origin {self.table.origin_angstrom[row].round(2).tolist()} Å "
                f"lies outside the {box[row]}-pixel box ({extent[row]:g} Å): expected a shift "
                "within the box",
            )

    def _data(self, code: int) -> np.ndarray:
        """The memory-mapped data ``(n_images, ny, nx)`` of stack ``code``."""
        if code in self._open_maps:
            self._open_maps.move_to_end(code)
        else:
            if len(self._open_maps) >= self.max_open:
                _, old = self._open_maps.popitem(last=False)
                old.close()
            self._open_maps[code] = StackMap(self._stacks[code])
        data = self._open_maps[code].data
        assert data is not None  # only close() drops it, and a closed map leaves _open_maps
        return data

    def __len__(self) -> int:
        return len(self.table)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images of table ``rows`` (any order, repeats allowed): ``(b, d, d)`` float32. The
        rows must share one box ``d`` (optics groups of one :attr:`image_sizes`); a ValueError
        otherwise (read each box's rows apart)."""
        rows = np.asarray(rows, dtype=np.int64)
        boxes = np.unique(self.image_sizes[self.table.optics_group[rows]])
        if len(boxes) > 1:
            raise ValueError(
                f"rows of images of different boxes {boxes.tolist()}: read each box's rows apart"
            )
        d = int(boxes[0]) if len(boxes) else 0
        out = np.empty((len(rows), d, d), dtype=np.float32)
        codes = self._codes[rows]
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for group in np.split(order, bounds):
            if group.size == 0:
                continue
            index = self.table.image_index[rows[group]]
            sort = np.argsort(index, kind="stable")  # ascending reads are kind to the page cache
            code = int(codes[group[0]])
            out[group[sort]] = self._data(code)[index[sort]]
            self._open_maps[code].release()
        flat = out.reshape(len(rows), -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            bad = int(rows[np.flatnonzero(~finite)[0]])
            raise InputError(
                self.table.image_path[bad],
                _image_number(self.table, bad),
                f"contains NaN or Inf ({self._table_file} row {bad + 1})",
            )
        peak = np.abs(flat).max(axis=1)
        if (peak > MAX_PIXEL_VALUE).any():
            i = int(np.flatnonzero(peak > MAX_PIXEL_VALUE)[0])
            bad = int(rows[i])
            raise InputError(
                self.table.image_path[bad],
                _image_number(self.table, bad),
                f"holds a pixel value of {peak[i]:.3g}; expected at most {MAX_PIXEL_VALUE:.0e} "
                f"in magnitude (squares of larger values overflow; {self._table_file} row "
                f"{bad + 1})",
            )
        return out

    def close(self) -> None:
        """Close every memory-mapped stack."""
        while self._open_maps:
            self._open_maps.popitem()[1].close()

    def __enter__(self) -> ParticleImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
