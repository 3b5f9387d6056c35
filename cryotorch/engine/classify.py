"""The classification of a run: the start (or a checkpoint), then online EM and full-batch EM
until convergence (:mod:`cryotorch.engine.em`), or with ``method="gradient"`` epochs of
gradient training (:mod:`cryotorch.engine.gradient_training`); then the result.

Data flow of one iteration: particle rows -> :class:`BatchMaker` (Fourier-cropped images, CTF,
shifts) -> :class:`EStep` (log-likelihoods ``(b, K)``) -> posterior -> class similarity ->
force hard -> :func:`accumulate_statistics` -> the M-step (maps, priors, noise): one
:func:`~cryotorch.engine.passes.estep_pass` and one :meth:`RunContext.m_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.context import Monitor, RunContext
from cryotorch.engine.em import full_em, online_em
from cryotorch.engine.gradient_training import gradient_epochs
from cryotorch.engine.passes import assignment_statistics
from cryotorch.engine.regularisers import Regulariser
from cryotorch.engine.settings import ClassificationSettings, Masks
from cryotorch.engine.start import initial_state
from cryotorch.engine.state import ClassificationResult, RunState

__all__ = ["classify"]


def classify(
    batcher: BatchMaker,
    settings: ClassificationSettings,
    monitor: Monitor | None = None,
    initial_maps: torch.Tensor | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    masks: Masks | None = None,
    regulariser: Regulariser | None = None,
    similarity_layer: nn.Module | None = None,
) -> ClassificationResult:
    """Classify the particles of ``batcher`` into ``settings.model.num_classes`` classes.

    ``initial_maps (k, d, d, d)`` at the working box, any greyscale: start from these (class
    ``k`` keeps their order); without them, from reconstructions of a random assignment of the
    particles to the K classes (RELION's start). Either way low-passed to the initial
    resolution.

    ``checkpoint`` is called after every iteration with the run's state (a dict of tensors and
    plain values, :meth:`RunState.state_dict`); ``resume``, such a state, continues the run
    from there: the result is bit for bit that of the uninterrupted run.

    ``masks``: the solvent mask, and a focus mask with its consensus map (see :class:`Masks`).
    ``regulariser``: your own :class:`Regulariser` instead of ``settings.model.regulariser``'s (a
    checkpoint records the settings, not this object: resume with the same one).
    ``similarity_layer``: your own posterior layer in place of class similarity, an
    ``nn.Module`` called as :class:`~cryotorch.engine.posterior.ClassSimilarity` is,
    ``layer(scores (b, k), beta) -> (b, k)`` probabilities (β from the settings' schedule).
    """
    run = RunContext(batcher, settings, masks or Masks(), regulariser, monitor, similarity_layer)
    if settings.model.num_classes > run.n:
        raise ValueError(
            f"model.num_classes = {settings.model.num_classes} is more than the {run.n} particles"
        )
    if resume is None:
        state = initial_state(run, initial_maps)
    else:
        state = RunState.from_state_dict(resume, run.device)
        if state.solvent_mask is not None:
            run.set_solvent_mask(state.solvent_mask)
        if monitor is not None and hasattr(monitor, "restore"):
            monitor.restore(state.history)
    if settings.optim.method == "gradient":
        gradient_epochs(run, state, checkpoint)
    else:
        online_em(run, state, checkpoint)
        full_em(run, state, checkpoint)
    return _result(run, state)


def _result(run: RunContext, state: RunState) -> ClassificationResult:
    """The run's result; the maps of the assigned particles from one more pass, if the run
    got as far as a full pass."""
    hard_maps = None
    if state.full_pass > 0:
        best = state.posteriors.argmax(1)
        stats = assignment_statistics(run, best, state.noise, label="hard maps")
        hard_maps, _, _ = run.m_step(stats, state.noise)
    return ClassificationResult(
        state.maps,
        run.pixel_size,
        state.prior,
        state.posteriors,
        state.posteriors_estep,
        state.history,
        hard_maps,
        run.mask,
    )
