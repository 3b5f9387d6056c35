"""Gradient training as a run does it (``optim=gradient``; the objective and the trained
parameters are in :mod:`cryotorch.engine.gradient`): per epoch, mini-batches of
``gradient.batch_size`` particles in a new random order, each one
:func:`~cryotorch.engine.passes.estep_pass` and one optimiser step; after the epoch the
regulariser's filter, the noise (from the residuals, as in EM) and the end of the iteration.
Under torch.distributed each rank scores its share and the gradients are summed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.context import RunContext
from cryotorch.engine.estep import EStepResult
from cryotorch.engine.gradient import ClassMaps, free_energy, gaussian_normaliser, make_optimizer
from cryotorch.engine.iteration import finish_iteration, iteration_row
from cryotorch.engine.mstep import SufficientStatistics
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.passes import Objective, estep_pass
from cryotorch.engine.state import RunState

__all__ = ["gradient_epochs"]


def gradient_epochs(
    run: RunContext, state: RunState, checkpoint: Callable[[dict], None] | None
) -> None:
    """The epochs of gradient training not yet done (``state.gradient`` holds the model's and
    the optimiser's state between them)."""
    g = run.settings.optim.gradient
    if run.regulariser.half_sets:
        raise ValueError("gradient training makes no half-set reconstructions for the regulariser")
    noise_power = state.noise.power if g.train_noise else None
    model = ClassMaps(state.maps, state.prior, run.mask, g.train_prior, noise_power)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(g.optimizer, trained, g.learning_rate)
    if state.gradient is not None:
        model.load_state_dict(state.gradient["model"])
        optimizer.load_state_dict(state.gradient["optimizer"])
    while not state.finished and state.full_pass < g.epochs:
        order = state.rng.permutation(run.n)
        stats = run.zeros(with_maps=False)  # class weights and noise sums of the epoch
        loglik_sum, count = 0.0, 0
        bar = run.progress(run.n, f"epoch {state.full_pass}", "particle")
        for start in range(0, run.n, g.batch_size):
            rows = order[start : start + g.batch_size]
            optimizer.zero_grad()
            maps = model.maps()
            noise = NoiseModel(model.noise_power()) if g.train_noise else state.noise
            step_stats = run.zeros(with_maps=False)
            step = estep_pass(
                run,
                state,
                rows,
                stats=step_stats,
                estep_posteriors=True,
                maps=maps,
                log_prior=model.log_prior(),
                noise=noise,
                objective=_objective(run, state, noise, g.train_noise),
            )
            # The prior's share of this step (once over the ranks): penalty / N per particle.
            loss = run.regulariser.penalty(maps) / run.n if run.group.is_main else 0.0
            loss = loss - step.objective / len(rows)
            if torch.is_tensor(loss) and loss.requires_grad:
                loss.backward()
            grads = [p.grad for p in trained if p.grad is not None]
            run.group.sum_(*grads)
            if not all(bool(torch.isfinite(grad).all()) for grad in grads):
                raise FloatingPointError(
                    f"gradient training: a non-finite gradient in epoch {state.full_pass} "
                    "(try a smaller optim.gradient.learning_rate)"
                )
            optimizer.step()
            state.posteriors[rows] = step.gamma.cpu().numpy()
            assert step.gamma_estep is not None  # asked for: estep_posteriors=True
            state.posteriors_estep[rows] = step.gamma_estep.cpu().numpy()
            stats.add_(step_stats)
            loglik_sum, count = loglik_sum + step.loglik_sum, count + step.count
            bar.update(len(rows))
        bar.close()
        _end_epoch(run, state, model, stats, trained_noise=g.train_noise)
        gamma = torch.as_tensor(state.posteriors)
        row, ess = iteration_row(
            run,
            state,
            "gradient",
            np.arange(run.n),
            gamma,
            loglik_sum / count,
            torch.as_tensor(state.posteriors_estep),
        )
        state.full_pass += 1
        state.finished = state.full_pass == g.epochs
        state.gradient = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        finish_iteration(run, state, row, checkpoint, ess)


def _objective(run: RunContext, state: RunState, noise: NoiseModel, train_noise: bool) -> Objective:
    """The free energy of a batch, plus the Gaussian normaliser when the noise is trained."""
    max_shell = run.resolution.max_shell(state.iteration, run.d, run.pixel_size)

    def objective(
        scores: torch.Tensor, gamma: torch.Tensor, result: EStepResult, batch: ParticleBatch
    ) -> torch.Tensor:
        value = free_energy(scores, gamma)
        if train_noise:
            counts = noise.pixels_per_shell() if batch.shell_counts is None else batch.shell_counts
            value = value + gaussian_normaliser(noise.power, counts, batch.optics_group, max_shell)
        return value

    return objective


def _end_epoch(
    run: RunContext,
    state: RunState,
    model: ClassMaps,
    stats: SufficientStatistics,
    trained_noise: bool,
) -> None:
    """The regulariser's filter on the maps; class proportions and noise from the epoch's sums
    ``stats`` (over the ranks; unless they are trained)."""
    model.set_maps(run.regulariser.filter_maps(model.maps().detach(), run.mask))
    if not run.settings.optim.gradient.train_prior:
        class_weight = stats.class_weight
        with torch.no_grad():
            model.logits.copy_(torch.log((class_weight / class_weight.sum()).to(run.dtype)))
    state.maps = model.maps().detach()
    state.prior = torch.exp(model.log_prior()).detach()
    if trained_noise:
        state.noise = NoiseModel(model.noise_power().detach())
    else:
        state.noise = NoiseModel.from_power_sums(
            stats.noise_sum, stats.noise_count, run.dtype, previous=state.noise
        )
