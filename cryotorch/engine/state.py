"""The run state: everything one iteration hands the next, which is exactly what a checkpoint
holds (:meth:`RunState.state_dict`), and the :class:`ClassificationResult` a run ends with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import torch

from cryotorch.engine.mstep import SufficientStatistics
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.settings import ClassificationSettings, settings_dict
from cryotorch.errors import InputError

__all__ = [
    "CHECKPOINT_FORMAT",
    "FIXED_ON_CONTINUE",
    "ClassificationResult",
    "RunState",
    "check_continuable",
    "check_resumable",
]

CONTINUE_HINT = "continue_from=<its folder> instead of resume=true"
CHECKPOINT_FORMAT = 3  # bumped when the checkpoint's keys change (3: one RunState)


@dataclass
class RunState:
    """The state of a run between two iterations (n particles, k classes, box d).

    Resuming from :meth:`state_dict` gives bit for bit the run that was not stopped: nothing
    a later iteration reads lives anywhere else.
    """

    maps: torch.Tensor  # (k, d, d, d)
    prior: torch.Tensor  # (k,) class proportions
    noise: NoiseModel
    rng: np.random.Generator  # every random draw after the start: batches, re-seeds
    order: np.ndarray  # (n,) online EM's current permutation of the particles
    posteriors: np.ndarray  # (n, k) float32 after the posterior layers, filled by full passes
    posteriors_estep: np.ndarray  # (n, k) float32, the E-step's posterior before the layers
    assignment: np.ndarray  # (n,) latest class (argmax) of every particle; -1: not seen yet
    iteration: int = 0  # iterations done (online steps, full passes and epochs together)
    online_step: int = 0
    full_pass: int = 0  # full-batch EM passes (or gradient epochs) done
    finished: bool = False
    running: SufficientStatistics | None = None  # online EM's mixed statistics
    consensus: torch.Tensor | None = None  # V̄ (d, d, d) that a focus mask compares outside F
    solvent_mask: torch.Tensor | None = None  # (d, d, d) made from the data (mask.solvent=auto)
    fitted_reference: torch.Tensor | None = None  # a given V̄, on the particles' greyscale
    splits: list[tuple[int, int]] = field(default_factory=list)  # re-seeds of this iteration
    reseeds_done: int = 0
    tuned_beta: float | None = None  # class similarity's start, when auto-tuned
    history: list[dict] = field(default_factory=list)  # one table row per iteration
    gradient: dict | None = None  # gradient training: ClassMaps and optimiser state dicts

    def state_dict(self, settings: ClassificationSettings) -> dict:
        """The state as tensors and plain values (loads with ``weights_only=True``), with the
        settings it was made with (:func:`check_resumable`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": settings_dict(settings),
            "n_particles": len(self.assignment),
            "box": self.maps.shape[-1],
            "iteration": self.iteration,
            "online_step": self.online_step,
            "full_pass": self.full_pass,
            "finished": self.finished,
            "splits": [list(pair) for pair in self.splits],
            "reseeds_done": self.reseeds_done,
            "maps": self.maps.cpu(),
            "prior": self.prior.cpu(),
            "noise_power": self.noise.power.cpu(),
            "consensus": _cpu_or_none(self.consensus),
            "solvent_mask": _cpu_or_none(self.solvent_mask),
            "fitted_reference": _cpu_or_none(self.fitted_reference),
            "running": None
            if self.running is None
            else {k: v.cpu() for k, v in self.running.as_dict().items()},
            "order": torch.from_numpy(self.order),
            "assignment": torch.from_numpy(self.assignment),
            "posteriors": torch.from_numpy(self.posteriors),
            "posteriors_estep": torch.from_numpy(self.posteriors_estep),
            "rng": self.rng.bit_generator.state,
            "tuned_beta": self.tuned_beta,
            "history": list(self.history),
            "gradient": None if self.gradient is None else _to_cpu(self.gradient),
        }

    @classmethod
    def from_state_dict(cls, sd: dict, device: torch.device) -> RunState:
        """Inverse of :meth:`state_dict`, tensors on ``device`` (the caller has checked that
        the settings match)."""

        @overload
        def dev(t: torch.Tensor) -> torch.Tensor: ...
        @overload
        def dev(t: None) -> None: ...
        def dev(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        rng = np.random.default_rng()
        rng.bit_generator.state = sd["rng"]
        running = sd["running"]
        return cls(
            maps=dev(sd["maps"]),
            prior=dev(sd["prior"]),
            noise=NoiseModel(dev(sd["noise_power"])),
            rng=rng,
            order=sd["order"].numpy().copy(),
            posteriors=sd["posteriors"].numpy().copy(),
            posteriors_estep=sd["posteriors_estep"].numpy().copy(),
            assignment=sd["assignment"].numpy().copy(),
            iteration=int(sd["iteration"]),
            online_step=int(sd["online_step"]),
            full_pass=int(sd["full_pass"]),
            finished=bool(sd["finished"]),
            running=None
            if running is None
            else SufficientStatistics(**{k: dev(v) for k, v in running.items()}),
            consensus=dev(sd["consensus"]),
            solvent_mask=dev(sd.get("solvent_mask")),  # absent before 2026-12-06
            fitted_reference=dev(sd["fitted_reference"]),
            splits=[(int(a), int(b)) for a, b in sd["splits"]],
            reseeds_done=int(sd["reseeds_done"]),
            tuned_beta=None if sd["tuned_beta"] is None else float(sd["tuned_beta"]),
            history=list(sd["history"]),
            gradient=sd["gradient"],
        )


@dataclass
class ClassificationResult:
    """``maps (k, d, d, d)`` at ``pixel_size`` (posterior-weighted); ``posteriors`` and
    ``posteriors_estep`` ``(n, k)`` in table order (after / before the posterior layers, last
    iteration); ``history``: one dict per iteration; ``hard_maps``: each class reconstructed
    from the particles whose most probable class it is (same statistics otherwise)."""

    maps: torch.Tensor
    pixel_size: float
    class_prior: torch.Tensor
    posteriors: np.ndarray
    posteriors_estep: np.ndarray
    history: list[dict] = field(default_factory=list)
    hard_maps: torch.Tensor | None = None  # (k, d, d, d) from each class's assigned particles
    solvent_mask: torch.Tensor | None = None  # (d, d, d) the run's solvent mask


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Settings added after checkpoints were first written, with the value that gives the run such
# a checkpoint was made by: a checkpoint without them resumes as that run.
_ADDED_SETTINGS = {"model.symmetry": "C1"}


def _changes(
    state: dict, settings: ClassificationSettings, inputs: dict | None
) -> dict[str, tuple[object, object]]:
    """``{key: (in the checkpoint, now)}`` of every setting (and input) that differs."""
    before, now = _flatten(state["settings"]), _flatten(settings_dict(settings))
    before = {**_ADDED_SETTINGS, **before}
    if inputs is not None:
        before.update(_flatten(state.get("inputs", {}), "inputs."))
        now.update(_flatten(inputs, "inputs."))
    return {
        key: (before.get(key), now.get(key))
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    }


def _check_shape(path: str | os.PathLike[str], state: dict, n_particles: int, box: int) -> None:
    if state["n_particles"] != n_particles or state["box"] != box:
        raise InputError(
            path,
            "n_particles/box",
            f"the checkpoint is of {state['n_particles']} particles at working box "
            f"{state['box']}, this run has {n_particles} at {box}",
        )


# What a continued run must keep: the checkpoint's classes, padded grid and kind of state,
# and its particles (the working box, fixed by the target resolution, is checked apart).
FIXED_ON_CONTINUE = (
    "model.num_classes",
    "model.pad",
    "optim.method",
    "inputs.particles",
    "inputs.particles_sha256",
)


def check_continuable(
    path: str | os.PathLike[str],
    state: dict,
    settings: ClassificationSettings,
    n_particles: int,
    box: int,
    inputs: dict | None = None,
) -> list[str]:
    """What changed (``key: old -> new``) if ``state`` can be continued with ``settings``
    (more iterations, other schedules, priors or layers); an :class:`InputError` naming the
    key if it cannot: other particles, another working box, a fixed setting
    (:data:`FIXED_ON_CONTINUE`) changed, or no iteration left to do."""
    changes = _changes(state, settings, inputs)
    if state["n_particles"] == n_particles and state["box"] != box:
        old, new = changes.get("model.target_resolution", (None, None))
        raise InputError(
            path,
            "model.target_resolution",
            f"a continued run keeps its working box {state['box']} (target {old} Å); "
            f"{new} Å needs box {box}",
        )
    _check_shape(path, state, n_particles, box)
    for key in FIXED_ON_CONTINUE:
        if key in changes:
            old, new = changes[key]
            raise InputError(
                path, key, f"a continued run keeps {key} ({old!r}; this run has {new!r})"
            )
    optim = settings.optim
    if optim.method == "gradient":
        key, limit = "optim.gradient.epochs", optim.gradient.epochs
    else:
        key, limit = "optim.max_iterations", optim.max_iterations
    if state["full_pass"] >= limit and not (optim.method == "em" and _online_left(state)):
        raise InputError(
            "configuration",
            key,
            f"the run has done {state['full_pass']} full passes ({key}={limit}): give more "
            "to continue it",
        )
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]


def _online_left(state: dict) -> bool:
    """Whether a stopped run is still in online EM (its running sums are kept until then)."""
    return state["running"] is not None


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
    _check_shape(path, state, n_particles, box)
    changed = [
        f"{key} was {old!r}, now {new!r}"
        for key, (old, new) in _changes(state, settings, inputs).items()
    ]
    if changed:
        raise InputError(
            path,
            "settings",
            "the run was started with other settings: "
            + "; ".join(changed)
            + f" (to continue it with these: {CONTINUE_HINT})",
        )


def _cpu_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def _to_cpu(tree: object) -> object:
    """A copy of nested dicts / lists of tensors with every tensor on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {key: _to_cpu(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_cpu(value) for value in tree)
    return tree
