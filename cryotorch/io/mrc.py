"""MRC maps and particle stacks (``.mrc``/``.mrcs``) through ``mrcfile``.

Maps are read whole. Particle images are read lazily: :class:`ParticleImages` memory-maps each
stack file (a few at a time), reads any list of particles grouped per stack file with one
vectorised gather each, and never loads a whole stack, so stacks larger than memory work.
After each batch it tells the kernel it no longer needs the mapped pages (``MADV_DONTNEED``),
so the resident memory stays that of one batch, however much of a stack has been read.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import pandas as pd

from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path
from cryotorch.particles import ParticleTable

__all__ = ["ParticleImages", "StackMap", "label_header", "read_map", "write_map", "write_stack"]

# MRC modes cryotorch reads: int8, int16, float32, uint16, float16.
SUPPORTED_MODES = {0, 1, 2, 6, 12}
PIXEL_SIZE_RTOL = 0.01


def _check_mode(path: Path, mode: int) -> None:
    if mode not in SUPPORTED_MODES:
        raise InputError(
            path,
            "header.mode",
            f"MRC mode {mode} is not supported (expected one of 0, 1, 2, 6, 12)",
        )


def _open(path: Path, header_only: bool = False):
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    try:
        return mrcfile.open(path, mode="r", header_only=header_only, permissive=False)
    except ValueError as exc:
        if "mode" in str(exc).lower():
            raise InputError(path, "header.mode", f"unsupported MRC mode ({exc})") from exc
        raise InputError(path, None, f"not a readable MRC file ({exc})") from exc


def read_map(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Read a 3D map: ``(volume (d, d, d) float32 indexed [z, y, x], voxel size in Å)``."""
    path = Path(path)
    with _open(path) as mrc:
        _check_mode(path, int(mrc.header.mode))
        data = np.array(mrc.data, dtype=np.float32)  # a writable copy
        voxel = float(mrc.voxel_size.x)
    if data.ndim != 3:
        raise InputError(path, "header.nz", f"expected a 3D map, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(path, "data", "contains NaN or Inf")
    return data, voxel


def label_header(mrc: mrcfile.mrcfile.MrcFile) -> None:
    """Replace mrcfile's time-stamped first label with a fixed one (reproducible files)."""
    mrc.header.label[0] = b"Created by cryotorch"
    mrc.header.nlabl = 1


def write_map(path: str | os.PathLike[str], volume: np.ndarray, voxel_size: float) -> None:
    """Write a 3D map (float32, indexed [z, y, x]) with its voxel size (Å), atomically."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size
            label_header(mrc)


def write_stack(path: str | os.PathLike[str], images: np.ndarray, pixel_size: float) -> None:
    """Write an image stack ``(n, d, d)`` float32 as an MRCS file, atomically."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
            label_header(mrc)


class StackMap:
    """A read-only memory map of one MRC stack's data, ``(n_images, ny, nx)``.

    mrcfile reads the header (mode, shape, byte order, extended-header size); the data are
    mapped with ``mmap`` directly so that :meth:`release` can drop the touched pages from this
    process's resident set (they stay in the page cache).
    """

    def __init__(self, path: Path) -> None:
        with _open(path, header_only=True) as mrc:
            dtype = mrcfile.utils.data_dtype_from_header(mrc.header)
            shape = mrcfile.utils.data_shape_from_header(mrc.header)
            offset = 1024 + int(mrc.header.nsymbt)
        shape = shape if len(shape) == 3 else (1, *shape[-2:])
        with open(path, "rb") as f:  # the map keeps its own handle
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = int(np.prod(shape))
        if offset + count * dtype.itemsize > len(self._map):
            self.close()
            raise InputError(
                path, "data", f"file is shorter than its header says ({shape} {dtype})"
            )
        self.data = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)

    def release(self) -> None:
        """Drop this mapping's pages from the resident set (no effect on the data)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.data = None
        self._map.close()


class ParticleImages:
    """Lazy reader of a table's particle images.

    Opening checks every stack header once: the file exists, the MRC mode is supported, every
    index is inside the stack, the image size matches the optics group, and the header's pixel
    size (when set) agrees with the table's within 1 %. Reading checks each batch for NaN/Inf.

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
        self.image_shape = self._check_headers(check_pixel_size)

    @property
    def _table_file(self) -> str:
        return str(self.table.source.path) if self.table.source is not None else "particle table"

    def _check_headers(self, check_pixel_size: bool) -> tuple[int, int]:
        max_index = np.zeros(len(self._stacks), dtype=np.int64)
        np.maximum.at(max_index, self._codes, self.table.image_index)
        first_row = np.full(len(self._stacks), len(self.table), dtype=np.int64)
        np.minimum.at(first_row, self._codes, np.arange(len(self.table)))
        shapes = set()
        for code, stack in enumerate(self._stacks):
            row = int(first_row[code])
            if not stack.is_file():
                raise InputError(
                    self._table_file,
                    "rlnImageName",
                    f"row {row + 1}: stack file {stack} does not exist",
                )
            with _open(stack, header_only=True) as mrc:
                h = mrc.header
                _check_mode(stack, int(h.mode))
                n_images, ny, nx = int(h.nz), int(h.ny), int(h.nx)
                header_psize = float(mrc.voxel_size.x)
            if max_index[code] >= n_images:
                bad = np.flatnonzero((self._codes == code) & (self.table.image_index >= n_images))[
                    0
                ]
                raise InputError(
                    self._table_file,
                    "rlnImageName",
                    f"row {bad + 1}: image {self.table.image_index[bad] + 1} is past the end of "
                    f"{stack}, which holds {n_images} images",
                )
            group = self.table.optics_group[row]
            expected_size = int(self.table.optics.image_size[group])
            if expected_size and (nx != expected_size or ny != expected_size):
                raise InputError(
                    stack,
                    "header.nx/ny",
                    f"images are {nx}x{ny}, the table's optics group says {expected_size}",
                )
            psize = float(self.table.optics.pixel_size_angstrom[group])
            if (
                check_pixel_size
                and header_psize > 0
                and abs(header_psize - psize) > PIXEL_SIZE_RTOL * psize
            ):
                raise InputError(
                    stack,
                    "header.voxel_size",
                    f"pixel size {header_psize:.4f} Å disagrees with {psize:.4f} Å in "
                    f"{self._table_file} "
                    "(check the file, or disable the check with check_pixel_size=False)",
                )
            shapes.add((ny, nx))
        if len(shapes) != 1:
            raise InputError(
                self._table_file, "rlnImageName", f"stacks have different image sizes {shapes}"
            )
        return shapes.pop()

    def _data(self, code: int) -> np.ndarray:
        """The memory-mapped data ``(n_images, ny, nx)`` of stack ``code``."""
        if code in self._open_maps:
            self._open_maps.move_to_end(code)
        else:
            if len(self._open_maps) >= self.max_open:
                _, old = self._open_maps.popitem(last=False)
                old.close()
            self._open_maps[code] = StackMap(self._stacks[code])
        return self._open_maps[code].data

    def __len__(self) -> int:
        return len(self.table)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images of table ``rows`` (any order, repeats allowed): ``(b, ny, nx)`` float32."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.image_shape), dtype=np.float32)
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
        finite = np.isfinite(out).reshape(len(rows), -1).all(axis=1)
        if not finite.all():
            bad = int(rows[np.flatnonzero(~finite)[0]])
            raise InputError(
                self.table.image_path[bad],
                f"image {self.table.image_index[bad] + 1}",
                f"contains NaN or Inf (table row {bad + 1})",
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
