"""Atomic output: write to a temporary file in the destination folder, then rename.

A reader never sees a half-written file, and a failed or interrupted write leaves the old file
(or nothing) in place. The temporary files are named ``.<name>.<random>.cryotorch-tmp<suffix>``,
so that those a killed run left (:func:`stale_temporary_files`) can be told from a user's own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryotorch.errors import OutputError

__all__ = ["TEMPORARY_MARK", "atomic_path", "stale_temporary_files"]

TEMPORARY_MARK = ".cryotorch-tmp"  # in the name of every temporary file atomic_path makes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix of ``path`` (some writers look at it). On an exception
    the temporary file is removed and ``path`` is left untouched; an operating-system error (a
    full disk, a read-only folder) is raised as an :class:`~cryotorch.errors.OutputError`
    naming ``path``.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f"{TEMPORARY_MARK}{path.suffix}", dir=path.parent
        )
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(path, exc) from exc
        raise


def stale_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The temporary files of :func:`atomic_path` in ``folder`` (those of writes a kill cut
    short), and nothing else: a user's ``.notes.tmp`` is not one."""
    return sorted(
        p for p in Path(folder).glob(f".*{TEMPORARY_MARK}*") if p.is_file() and not p.is_symlink()
    )
