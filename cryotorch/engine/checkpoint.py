"""Checkpoints: the run's state after every iteration, so that a killed run can be resumed.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts (see
``_state_dict`` in :mod:`cryotorch.engine.loop`), written atomically with ``torch.save`` and
read with ``torch.load(weights_only=True)``: loading one never runs code from the file.
Resuming from it gives bit for bit the result of the uninterrupted run (same machine, same
number of threads).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cryotorch.engine.loop import CHECKPOINT_FORMAT, ClassificationSettings, settings_dict
from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path

__all__ = ["CHECKPOINT_NAME", "check_resumable", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike[str], state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """Read a checkpoint with ``weights_only=True``; an :class:`InputError` if it is not one."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or code-carrying file
        raise InputError(path, None, f"not a cryotorch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            path, "format", f"expected a cryotorch checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return state


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(
    path: str | os.PathLike[str],
    state: dict,
    settings: ClassificationSettings,
    n_particles: int,
    box: int,
    inputs: dict | None = None,
) -> None:
    """An :class:`InputError` naming what differs if ``state`` is not a run of these settings
    on these particles (and, if given, these ``inputs``: files and options the caller saved
    in the checkpoint under ``"inputs"``)."""
    if state["n_particles"] != n_particles or state["box"] != box:
        raise InputError(
            path,
            "n_particles/box",
            f"the checkpoint is of {state['n_particles']} particles at working box "
            f"{state['box']}, this run has {n_particles} at {box}",
        )
    before, now = _flatten(state["settings"]), _flatten(settings_dict(settings))
    if inputs is not None:
        before.update(_flatten(state.get("inputs", {}), "inputs."))
        now.update(_flatten(inputs, "inputs."))
    changed = [
        f"{key} was {before.get(key)!r}, now {now.get(key)!r}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if changed:
        raise InputError(
            path, "settings", "the run was started with other settings: " + "; ".join(changed)
        )
