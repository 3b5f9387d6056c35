"""Expectation-maximisation as a run does it: online EM on mini-batches of ``batch_per_class x
K`` particles whose statistics a falling rate mixes, then full-batch EM until convergence.
Each iteration is one :func:`~cryotorch.engine.passes.estep_pass`, one M-step and the end of
the iteration (:mod:`cryotorch.engine.iteration`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cryotorch.engine.consensus import consensus_from
from cryotorch.engine.context import RunContext
from cryotorch.engine.iteration import finish_iteration, iteration_row
from cryotorch.engine.passes import estep_pass
from cryotorch.engine.schedules import online_learning_rate
from cryotorch.engine.state import RunState

__all__ = ["full_em", "online_em", "online_steps"]

Checkpoint = Callable[[dict], None] | None


def online_steps(run: RunContext) -> tuple[int, int]:
    """Mini-batch size ``batch_per_class x K`` and number of online-EM steps."""
    settings = run.settings
    batch_n = min(run.n, settings.optim.batch_per_class * run.k)
    epochs = settings.optim.online_epochs
    return batch_n, math.ceil(epochs * run.n / batch_n) if epochs > 0 else 0


def online_em(run: RunContext, state: RunState, checkpoint: Checkpoint) -> None:
    """The online-EM steps not yet done: each mini-batch's statistics, scaled to the whole
    data set, are mixed into the running sums with the rate of
    :func:`~cryotorch.engine.schedules.online_learning_rate`; the maps follow every step."""
    settings = run.settings
    batch_n, n_online = online_steps(run)
    left = n_online - state.online_step
    bar = run.progress(n_online, "online EM" if left > 1 else None, "step", state.online_step)
    while not state.finished and state.online_step < n_online:
        step = state.online_step
        start = (step * batch_n) % run.n
        if start + batch_n > run.n:
            state.order = state.rng.permutation(run.n)
            start = 0
        rows = state.order[start : start + batch_n]
        batch_stats = run.zeros()
        result = estep_pass(run, state, rows, stats=batch_stats, estep_posteriors=True)
        batch_stats.scale_(run.n / len(rows))
        rate = online_learning_rate(
            step, n_online, settings.optim.learning_rate, settings.optim.half_life_percent
        )
        state.running = (
            batch_stats
            if state.running is None
            else state.running.scale_(1 - rate).add_(batch_stats, rate)
        )
        state.consensus = consensus_from(run, state, state.running, state.noise)
        state.maps, state.prior, state.noise = run.m_step(state.running, state.noise)
        assert result.gamma_estep is not None  # asked for: estep_posteriors=True
        row, ess = iteration_row(
            run, state, "online", rows, result.gamma, result.mean_loglik, result.gamma_estep
        )
        state.online_step += 1
        if state.online_step == n_online:
            state.running = None  # not needed any more: keeps the checkpoints small
        finish_iteration(run, state, row, checkpoint, ess)
        bar.update()
    bar.close()


def full_em(run: RunContext, state: RunState, checkpoint: Checkpoint) -> None:
    """Full-batch EM passes until fewer than ``convergence_percent`` of the particles change
    class, or ``max_iterations``. Convergence is only looked for once the schedules are done:
    β has reached 0 (or force-hard is on), a ``first_n`` hard phase is over, and the E-step has
    reached the target resolution (particles that stop changing class at 8 Å may well change
    at 5 Å); and not in an iteration that re-seeds a class."""
    settings = run.settings
    everyone = np.arange(run.n)
    while not state.finished and state.full_pass < settings.optim.max_iterations:
        stats = run.zeros()
        label = f"iteration {state.iteration}"
        result = estep_pass(run, state, everyone, stats=stats, label=label, estep_posteriors=True)
        state.posteriors[:] = result.gamma.cpu().numpy()
        assert result.gamma_estep is not None  # asked for: estep_posteriors=True
        state.posteriors_estep[:] = result.gamma_estep.cpu().numpy()
        beta, hard = run.beta_and_hard(state)
        state.consensus = consensus_from(run, state, stats, state.noise)
        state.maps, state.prior, state.noise = run.m_step(stats, state.noise)
        gamma = torch.as_tensor(state.posteriors)
        row, ess = iteration_row(
            run, state, "full", everyone, gamma, result.mean_loglik, result.gamma_estep
        )
        state.full_pass += 1
        schedules_done = (
            (hard or beta == 0.0)  # with force-hard on, β has no effect
            and run.resolution.reached(state.iteration, run.d, run.pixel_size)
            and not (settings.posterior.hard == "first_n" and hard)
        )
        converged = (
            state.full_pass >= 2
            and schedules_done
            and row["percent_changed"] is not None
            and row["percent_changed"] < settings.optim.convergence_percent
            and not state.splits
        )
        state.finished = converged or state.full_pass == settings.optim.max_iterations
        finish_iteration(run, state, row, checkpoint, ess)
