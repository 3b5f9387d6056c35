"""Continuing a finished or stopped run with more iterations or other settings (RELION's
``--continue``): ``cryotorch-classify continue_from=run1 optim.max_iterations=40``.

The run is composed from ``run1``'s recorded command line (``run1/.hydra/overrides.yaml``) with
the new overrides on top, so only what changes is typed; it starts from ``run1``'s checkpoint
and writes into ``run1`` itself unless ``output_dir`` names another folder (then ``run1`` is
only read). What may change is everything but what fixes the checkpoint's shapes and meaning
(:func:`~cryotorch.engine.state.check_continuable`); what changed is printed and
recorded in ``output_dir/.hydra/continued.yaml``. Crash recovery (``resume=true``) stays exact
and refuses any change.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path
from cryotorch.io.checkpoint import CHECKPOINT_NAME

__all__ = [
    "CONTINUE_KEY",
    "continue_arguments",
    "continue_source",
    "record_continuation",
]

CONTINUE_KEY = "continue_from"
# Overrides of the earlier command line that continuing never repeats.
_NOT_CARRIED = ("resume", CONTINUE_KEY)


def override_key(arg: str) -> str:
    """The key an override sets: ``model.pad`` of ``model.pad=2``, ``+x=1``, ``~x``."""
    return arg.lstrip("+~").split("=", 1)[0]


def continue_source(continue_from: str | None) -> Path | None:
    """The checkpoint ``continue_from`` names (a run's folder, or its ``checkpoint.pt``)."""
    if continue_from is None:
        return None
    path = Path(continue_from)
    return path if path.suffix == ".pt" else path / CHECKPOINT_NAME


def continue_arguments(args: list[str]) -> list[str]:
    """The command line ``args`` with ``continue_from=DIR`` expanded: DIR's recorded
    overrides, then ``args`` (a key given in both takes the new value), and
    ``output_dir=DIR`` unless ``args`` give one. ``args`` unchanged without
    ``continue_from``. An :class:`InputError` if DIR holds no run to continue."""
    given = [arg for arg in args if override_key(arg) == CONTINUE_KEY]
    if not given:
        return args
    source = continue_source(given[-1].split("=", 1)[1])
    assert source is not None
    folder = source.parent
    if not source.is_file():
        raise InputError(source, None, "no such checkpoint: expected a run's folder to continue")
    record = folder / ".hydra" / "overrides.yaml"
    try:
        recorded = OmegaConf.load(record)
    except (OSError, ValueError) as exc:
        raise InputError(
            record, None, f"cannot be read ({exc}): expected the run's record"
        ) from exc
    if not isinstance(recorded, ListConfig) or not all(isinstance(a, str) for a in recorded):
        raise InputError(record, None, "expected a list of overrides, as cryotorch writes it")
    if "-m" in args or "--multirun" in args:
        if not any(override_key(arg) == "output_dir" for arg in args):
            raise InputError(
                "configuration",
                CONTINUE_KEY,
                "a sweep that continues a run needs its own output_dir",
            )
    new_keys = {override_key(arg) for arg in args}
    carried = [
        str(arg)
        for arg in recorded
        if override_key(str(arg)) not in new_keys and override_key(str(arg)) not in _NOT_CARRIED
    ]
    if "output_dir" not in new_keys:
        carried = [a for a in carried if override_key(a) != "output_dir"]
        carried.append(f"output_dir={_hydra_value(str(folder))}")
    return carried + args


def record_continuation(output_dir: Path, source: Path, after: int, changes: list[str]) -> None:
    """Append this continuation (from which checkpoint, after which iteration, what changed)
    to ``output_dir/.hydra/continued.yaml``, after the continued run's own entries."""
    path = Path(output_dir) / ".hydra" / "continued.yaml"
    earlier = source.parent / ".hydra" / "continued.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = OmegaConf.to_container(OmegaConf.load(earlier)) if earlier.is_file() else []
    assert isinstance(entries, list)
    entries.append({"from": str(source), "after_iteration": after, "changed": changes})
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(entries)))


def _hydra_value(text: str) -> str:
    """``text`` as a value of Hydra's override grammar: as it is if plain, else quoted."""
    if re.fullmatch(r"[\w./-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
