"""One pass over some particles, the unit every phase of a run is made of.

:func:`estep_pass` scores ``rows`` against the class maps (E-step), puts the scores through
the posterior layers and adds the weighted particles into sufficient statistics: online EM's
mini-batches, full-batch EM's passes and gradient training's optimiser steps are each one
call. :func:`assignment_statistics` is the same pass with the classes given instead of
scored (the random and PCA starts, and the maps of the assigned particles at the end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.context import RunContext
from cryotorch.engine.estep import EStepResult, log_posterior
from cryotorch.engine.mstep import SufficientStatistics, accumulate_statistics
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.state import RunState
from cryotorch.errors import InputError
from cryotorch.physics.projector import prepare_volumes

__all__ = ["Objective", "PassResult", "assignment_statistics", "estep_pass"]

# Per batch: (log-scores ℓ + log π (b, k), class weights after the layers (b, k), the batch's
# E-step result) -> a (b,) objective to maximise, with its gradient (gradient training).
Objective = Callable[[torch.Tensor, torch.Tensor, EStepResult, ParticleBatch], torch.Tensor]


@dataclass
class PassResult:
    """What a pass over ``rows`` gives, summed over the ranks.

    ``gamma (len(rows), k)``: the class weights after the layers, detached, in the order of
    ``rows``; ``gamma_estep``: the E-step's posterior before the layers (if asked for);
    ``loglik_sum``: ``Σ_i log Σ_k π_k exp ℓ_ik`` over the ``count`` particles; ``objective``:
    this rank's sum of the :data:`Objective` (with its gradient), 0 without one.
    """

    gamma: torch.Tensor
    gamma_estep: torch.Tensor | None
    loglik_sum: float
    count: int
    objective: torch.Tensor | float = 0.0

    @property
    def mean_loglik(self) -> float:
        return self.loglik_sum / self.count


def estep_pass(
    run: RunContext,
    state: RunState,
    rows: np.ndarray,
    *,
    stats: SufficientStatistics | None = None,
    label: str | None = None,
    estep_posteriors: bool = False,
    maps: torch.Tensor | None = None,
    log_prior: torch.Tensor | None = None,
    noise: NoiseModel | None = None,
    objective: Objective | None = None,
) -> PassResult:
    """Score ``rows (m,)`` against the class maps, weigh them by the posterior layers and add
    them into ``stats`` (if given; summed over the ranks here).

    The maps, log class priors ``(k,)`` and noise of the E-step are ``state``'s unless given
    (gradient training gives its parameters, which keep their gradient; the statistics then
    take detached weights and no gradient). ``label``: a progress bar's.
    """
    maps = state.maps if maps is None else maps
    log_prior = torch.log(state.prior.clamp_min(1e-30)) if log_prior is None else log_prior
    noise = state.noise if noise is None else noise
    volumes = prepare_volumes(run.estep_maps(state, maps), run.settings.model.pad)
    max_shell = run.resolution.max_shell(state.iteration, run.d, run.pixel_size)
    insertion_shell = run.insertion_shell(state)
    gamma = torch.zeros(len(rows), run.k, device=run.device, dtype=run.dtype)  # all ranks' rows
    gamma_estep = torch.zeros_like(gamma) if estep_posteriors else None
    positions = run.group.shard(np.arange(len(rows)))
    loglik = torch.zeros(2, dtype=torch.float64, device=run.device)  # sum, count
    total: torch.Tensor | float = 0.0
    done = 0
    for batch in run.batches(rows, label):
        result = run.estep(volumes, batch, noise, max_shell)
        _refuse_non_finite(run, batch.rows, result.loglik)
        scores = result.loglik + log_prior
        weights = run.layers(scores, batch.rows, state)
        if objective is not None:
            total = total + objective(scores, weights, result, batch).sum()
        at = positions[done : done + len(batch.rows)]
        done += len(batch.rows)
        with torch.no_grad():
            if stats is not None:
                run.accumulate(stats, batch, result, weights.detach(), state.noise, insertion_shell)
            gamma[at] = weights.detach()
            if gamma_estep is not None:
                gamma_estep[at] = torch.exp(log_posterior(result.loglik, log_prior))
            loglik[0] += torch.logsumexp(scores, 1).double().sum()
            loglik[1] += len(batch.rows)
    sums = [gamma, loglik] + ([] if gamma_estep is None else [gamma_estep])
    run.group.sum_(*([] if stats is None else stats.tensors()), *sums)
    return PassResult(gamma, gamma_estep, float(loglik[0]), int(loglik[1]), total)


def _refuse_non_finite(run: RunContext, rows: np.ndarray, loglik: torch.Tensor) -> None:
    """An :class:`InputError` naming the first particle of ``rows (b,)`` whose log-likelihood
    ``(b, k)`` is not finite, before it reaches the sums: the second line of defence behind
    the readers' checks (an image source that is not checked, or values the checks let
    through but the arithmetic does not)."""
    finite = torch.isfinite(loglik).all(dim=1)
    if bool(finite.all()):
        return
    row = int(rows[int(torch.nonzero(~finite)[0, 0])])
    table = run.batcher.table
    source = table.source.path if table.source is not None else "particles"
    stack = f"{table.image_path[row]} image {int(table.image_index[row]) + 1}"
    raise InputError(
        source,
        f"row {row + 1}",
        f"the particle's log-likelihood is not finite: its image ({stack}) or CTF holds "
        "values no data set has",
    )


def assignment_statistics(
    run: RunContext,
    classes: np.ndarray,
    noise: NoiseModel,
    n_classes: int | None = None,
    label: str | None = None,
) -> SufficientStatistics:
    """Statistics of the hard assignment ``classes (n,)`` (0-based) of every particle, summed
    over the ranks: into the K classes (per half-set if the regulariser wants them), or, with
    ``n_classes``, into that many plain groups. No E-step, so no noise sums. ``label``: a
    progress bar's."""
    groups = n_classes or run.k
    if n_classes is None:
        stats = run.zeros()
    else:
        stats = SufficientStatistics.zeros(
            groups, run.d, run.settings.model.pad, run.n_groups, run.device, run.dtype
        )
    labels = torch.as_tensor(classes, device=run.device)
    for batch in run.batches(np.arange(run.n), label):
        gamma = torch.nn.functional.one_hot(labels[batch.rows], groups).to(run.dtype)
        if n_classes is None:
            run.accumulate(stats, batch, None, gamma, noise)
        else:
            accumulate_statistics(stats, batch, None, gamma, noise)
    run.group.sum_(*stats.tensors())
    return stats
