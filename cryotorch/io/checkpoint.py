"""Checkpoint files: a run's state after every iteration, so that a killed run can be resumed.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts (made by
:meth:`cryotorch.engine.state.RunState.state_dict`), written atomically with ``torch.save``
and read with ``torch.load(weights_only=True)``: loading one never runs code from the file.
Resuming from it gives bit for bit the result of the uninterrupted run (same machine, same
number of threads).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike[str], state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the previous checkpoint). It is
    serialised in memory first: torch's own file writer reports a full disk as a C++ error
    ("unexpected pos"), Python's as the :class:`~cryotorch.errors.OutputError` it is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike[str], checkpoint_format: int) -> dict:
    """Read a checkpoint with ``weights_only=True``; an :class:`InputError` if it is not one of
    ``checkpoint_format`` (:data:`cryotorch.engine.state.CHECKPOINT_FORMAT`)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or code-carrying file
        raise InputError(path, None, f"not a cryotorch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != checkpoint_format:
        raise InputError(
            path, "format", f"expected a cryotorch checkpoint of format {checkpoint_format}"
        )
    return state
