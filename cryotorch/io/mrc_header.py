"""Opening MRC files and checking their headers: the modes cryotorch reads, and the files of
older writers (no ``MAP `` id string, no machine stamp) read leniently, as RELION does.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import mrcfile

from cryotorch.errors import InputError, warn_input

__all__ = ["LENIENT_PROBLEMS", "SUPPORTED_MODES", "check_mode", "open_mrc"]

# MRC modes cryotorch reads: int8, int16, float32, uint16, float16.
SUPPORTED_MODES = {0, 1, 2, 6, 12}
# What mrcfile's strict mode refuses in files that RELION and cryoDRGN read (older writers).
LENIENT_PROBLEMS = ("map id string not found", "machine stamp")  # lower case


def check_mode(path: Path, mode: int, mrc: mrcfile.mrcfile.MrcFile | None = None) -> None:
    """An InputError (closing ``mrc`` first) unless ``mode`` is one cryotorch reads."""
    if mode not in SUPPORTED_MODES:
        if mrc is not None:
            mrc.close()
        raise InputError(
            path,
            "header.mode",
            f"MRC mode {mode} is not supported (expected one of 0, 1, 2, 6, 12)",
        )


def open_mrc(path: Path, header_only: bool = False) -> mrcfile.mrcfile.MrcFile:
    """Open an MRC file for reading (the caller closes it).

    Files without the ``MAP `` id string or with a zero (or unknown) machine stamp, as older
    writers (cryoDRGN before 1.0, some EMAN and IMOD versions) make them, are read as RELION
    and cryoDRGN read them: through mrcfile's permissive mode, little-endian unless the mode
    only makes sense in the other byte order, with one warning. Anything else that mrcfile's
    strict mode refuses (a short file, a bad mode, bad dimensions) is an InputError.
    """
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    try:
        mrc = mrcfile.open(path, mode="r", header_only=header_only, permissive=False)
    except ValueError as exc:
        if "mode" in str(exc).lower():
            raise InputError(path, "header.mode", f"unsupported MRC mode ({exc})") from exc
        if not any(k in str(exc).lower() for k in LENIENT_PROBLEMS):
            field, problem = _header_fault(path)
            raise InputError(path, field, problem or f"not a readable MRC file ({exc})") from exc
    else:
        check_mode(path, int(mrc.header.mode), mrc)
        _check_layout(path, mrc)
        return mrc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.open(path, mode="r", header_only=header_only, permissive=True)
        except (ValueError, OSError) as exc:
            raise InputError(path, None, f"not a readable MRC file ({exc})") from exc
    problems = [str(w.message) for w in caught]
    serious = [m for m in problems if not any(k in m.lower() for k in LENIENT_PROBLEMS)]
    h = mrc.header
    if serious or min(int(h.nx), int(h.ny), int(h.nz)) < 1:
        mrc.close()
        why = "; ".join(serious) or f"dimensions {int(h.nx)} x {int(h.ny)} x {int(h.nz)}"
        raise InputError(path, None, f"not a readable MRC file ({why})")
    check_mode(path, int(h.mode), mrc)
    _check_layout(path, mrc)
    said = "no 'MAP ' id string" if any("Map ID" in m for m in problems) else ""
    if any("machine stamp" in m.lower() for m in problems):
        said += (" and " if said else "") + f"machine stamp {bytes(h.machst)!r}"
    order = "big" if h.mode.dtype.byteorder == ">" else "little"
    warn_input(
        path,
        "header",
        f"{said} (an older MRC writer); read as {order}-endian MRC, as RELION and cryoDRGN do",
    )
    return mrc


def _header_fault(path: Path) -> tuple[str | None, str | None]:
    """The header field that makes a file mrcfile refuses unreadable, as (field, problem):
    a negative extended-header length or a size below 1 (mrcfile says 'negative count' or
    'cannot reshape'); (None, None) when it is none of those."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) < 1024:
        return None, None
    order = ">" if head[212] == 0x11 else "<"  # the machine stamp: big- or little-endian
    nx, ny, nz = struct.unpack(order + "3i", head[:12])
    (nsymbt,) = struct.unpack(order + "i", head[92:96])
    if min(nx, ny, nz) < 1:
        return "header.nx/ny/nz", f"{nx} x {ny} x {nz}: expected sizes of at least 1"
    if nsymbt < 0:
        return "header.nsymbt", f"{nsymbt}: expected the extended header's length in bytes (>= 0)"
    return None, None


def _check_layout(path: Path, mrc: mrcfile.mrcfile.MrcFile) -> None:
    """An InputError (closing ``mrc`` first) unless the data lie as cryotorch reads them: x
    fastest, then y, then z (``mapc/mapr/maps`` 1, 2, 3; 0, 0, 0 is taken as that, with a
    warning), and the file holds exactly the data its header describes. A file of another
    size has a header that does not describe it (a corrupt mode, size or extended-header
    length: its pixels would be read as garbage), or was cut short."""
    h = mrc.header
    order = (int(h.mapc), int(h.mapr), int(h.maps))
    if order == (0, 0, 0):
        warn_input(path, "header.mapc/mapr/maps", "0, 0, 0 (not set); read as 1, 2, 3")
    elif order != (1, 2, 3):
        mrc.close()
        raise InputError(
            path,
            "header.mapc/mapr/maps",
            f"axis order {order[0]}, {order[1]}, {order[2]}; cryotorch reads files stored x "
            "fastest, then y, then z (1, 2, 3): reorder it first",
        )
    nx, ny, nz, nsymbt = int(h.nx), int(h.ny), int(h.nz), int(h.nsymbt)
    if min(nx, ny, nz) < 1:
        mrc.close()
        raise InputError(
            path, "header.nx/ny/nz", f"{nx} x {ny} x {nz}: expected sizes of at least 1"
        )
    expected = 1024 + nsymbt + nx * ny * nz * _itemsize(int(h.mode))
    size = path.stat().st_size
    if size != expected or nsymbt < 0:
        mrc.close()
        raise InputError(
            path,
            "header",
            f"says {nx} x {ny} x {nz} values of mode {int(h.mode)} after a {nsymbt}-byte "
            f"extended header, {expected} bytes, but the file has {size}: "
            + ("is it cut short?" if size < expected else "expected a header that fits the data"),
        )


def _itemsize(mode: int) -> int:
    """Bytes per pixel of MRC ``mode`` (one of :data:`SUPPORTED_MODES`)."""
    return {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}[mode]
