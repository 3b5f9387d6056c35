"""A read-only memory map of one MRC stack, whose touched pages can be dropped from memory."""

from __future__ import annotations

import mmap
from pathlib import Path

import mrcfile.utils
import numpy as np

from cryotorch.errors import InputError
from cryotorch.io.mrc_header import open_mrc

__all__ = ["StackMap"]


class StackMap:
    """A read-only memory map of one MRC stack's data, ``(n_images, ny, nx)``.

    mrcfile reads the header (mode, shape, byte order, extended-header size); the data are
    mapped with ``mmap`` directly so that :meth:`release` can drop the touched pages from this
    process's resident set (they stay in the page cache).
    """

    data: np.ndarray | None  # None once closed

    def __init__(self, path: Path) -> None:
        with open_mrc(path, header_only=True) as mrc:
            h = mrc.header
            dtype = mrcfile.utils.data_dtype_from_header(h)
            # Every section an image, whatever the space group says (a volume stack's
            # sections too, as ParticleImages counts them).
            shape = (int(h.nz), int(h.ny), int(h.nx))
            offset = 1024 + int(h.nsymbt)
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
