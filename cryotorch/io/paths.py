"""Where particle stacks live: resolving the paths that STAR and .cs files give.

Both formats may give stack paths relative to some folder. cryotorch resolves a relative path
against ``data_dir`` when the user gives one, else against the folder of the particle file; for
``.cs`` files it also tries the folder above (cryoSPARC writes paths relative to the project
directory, and a job's ``.cs`` sits one level below it). cryoSPARC marks some paths with a
leading ``>``; it is dropped. Resolution is done once per distinct stack, not per particle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["resolve_stack_paths", "stack_path_for_output"]


def resolve_stack_paths(
    paths: np.ndarray,
    base_dir: Path,
    data_dir: Path | None = None,
    fallback_dirs: tuple[Path, ...] = (),
) -> tuple[np.ndarray, Path]:
    """``(n,)`` stack paths as written in a file -> ``(n,)`` absolute paths (str), root folder.

    A relative path is joined to ``data_dir`` if given, else to ``base_dir``; if that file does
    not exist, each of ``fallback_dirs`` is tried in turn (the first candidate is kept when
    none exists, so that the error names it). The folder that resolved the first relative path
    is returned too: a writer may copy the paths verbatim only into a file in that folder.
    """
    codes, uniques = pd.factorize(pd.Series(paths, dtype=str))
    resolved = []
    root = None
    for raw in uniques:
        name = raw[1:] if raw.startswith(">") else raw
        p = Path(name)
        if p.is_absolute():
            resolved.append(str(p))
            continue
        candidates = [data_dir if data_dir is not None else base_dir]
        candidates += list(fallback_dirs) if data_dir is None else []
        folder = next((d for d in candidates if (d / p).exists()), candidates[0])
        root = root or folder
        resolved.append(os.path.abspath(folder / p))
    return np.asarray(resolved, dtype=str)[codes], Path(os.path.abspath(root or base_dir))


def stack_path_for_output(paths: np.ndarray, output_dir: Path, absolute: bool) -> np.ndarray:
    """``(n,)`` absolute stack paths -> as to be written in a file in ``output_dir``."""
    if absolute:
        return np.asarray(paths, dtype=str)
    codes, uniques = pd.factorize(pd.Series(paths, dtype=str))
    rel = [os.path.relpath(u, os.path.abspath(output_dir)) for u in uniques]
    return np.asarray(rel, dtype=str)[codes]
