"""The end of every iteration, whatever the phase: its row of the table (:func:`iteration_row`:
sizes, ESS, classes changed, empty and look-alike classes and the re-seed they call for), then
:func:`finish_iteration` (history, checkpoint, monitor)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from cryotorch.engine.class_health import duplicate_classes, empty_classes, plan_reseed
from cryotorch.engine.context import RunContext
from cryotorch.engine.posterior import effective_sample_size
from cryotorch.engine.state import RunState

__all__ = ["finish_iteration", "iteration_row"]


def iteration_row(
    run: RunContext,
    state: RunState,
    phase: str,
    rows: np.ndarray,
    gamma: torch.Tensor,
    loglik_mean: float,
    gamma_estep: torch.Tensor,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """This iteration's row of ``iterations.csv``, after its M-step, and the ESS of each of
    ``rows`` (for histograms): ``gamma (len(rows), k)`` the class weights of ``rows`` after the
    layers, ``gamma_estep`` the E-step's posterior before them. Both ESS are kept, because
    they answer different questions: the E-step's says how sure the data are (a spread of it
    at β = 0 is the data's), the other what the M-step used (1 for every particle under force
    hard). Records the particles' new classes in ``state.assignment`` and plans a re-seed for
    the next iteration (``state.splits``)."""
    beta, hard = run.beta_and_hard(state)
    changed = _switched(state, rows, gamma.argmax(1).cpu().numpy())
    sizes = gamma.sum(0).double()
    ess = effective_sample_size(gamma.double())
    ess_estep = effective_sample_size(gamma_estep.double())
    row = {
        "iteration": state.iteration,
        "phase": phase,
        "beta": beta,
        "hard": hard,
        "resolution": run.resolution.resolution(state.iteration),
        "percent_changed": changed,
        "mean_class_ess": float(ess.mean()),
        "mean_estep_ess": float(ess_estep.mean()),
        "log_likelihood": loglik_mean,
        **{f"class_{i + 1:03d}_fraction": float(sizes[i] / sizes.sum()) for i in range(run.k)},
        **run.regulariser_columns,
    }
    now = time.perf_counter()
    row["seconds"] = now - run.clock
    run.clock = now
    row.update(_check_classes(run, state))
    return row, {"class_ess": ess.float(), "estep_ess": ess_estep.float()}


def finish_iteration(
    run: RunContext,
    state: RunState,
    row: dict,
    checkpoint: Callable[[dict], None] | None,
    histograms: dict[str, torch.Tensor] | None = None,
) -> None:
    """Record ``row`` (with the columns the monitor's ``annotate`` adds, if it has one), count
    the iteration, checkpoint the state, then tell the monitor (and give it ``histograms``,
    per-particle values by name, if it has a ``log_histograms``)."""
    monitor = run.monitor
    if run.group.is_main and monitor is not None and hasattr(monitor, "annotate"):
        monitor.annotate(row, state.assignment)
    state.history.append(row)
    state.iteration += 1
    if not run.group.is_main:
        return
    if checkpoint is not None:
        checkpoint(state.state_dict(run.settings))
    if monitor is not None:
        monitor(row, state.maps, state.assignment.copy())
        if histograms and hasattr(monitor, "log_histograms"):
            monitor.log_histograms(histograms, row["iteration"])


def _switched(state: RunState, rows: np.ndarray, classes: np.ndarray) -> float | None:
    """Percent of ``rows`` seen before whose class is not ``classes`` now (None: none seen)."""
    seen = state.assignment[rows] >= 0
    changed = (
        float((state.assignment[rows][seen] != classes[seen]).mean() * 100)
        if seen.any()
        else None  # nothing to compare with yet
    )
    state.assignment[rows] = classes
    return changed


def _check_classes(run: RunContext, state: RunState) -> dict:
    """Report empty and duplicate classes; plan a re-seed for the next iteration if any are
    left (``state.splits``). Returns the table's columns for them."""
    settings = run.settings
    empty = empty_classes(state.prior, settings.model.empty_class_fraction)
    resolution = run.resolution.resolution(state.iteration)
    pairs = duplicate_classes(
        state.maps, run.mask, resolution, run.pixel_size, settings.model.duplicate_correlation
    )
    just_split = {frozenset(pair) for pair in state.splits}  # made in this iteration
    notes, run.notes = run.notes, []
    notes += [f"class {k + 1} empty ({100 * float(state.prior[k]):.2f} %)" for k in empty]
    notes += [
        f"classes {i + 1} and {j + 1} alike (correlation {c:.4f}"
        + ("; just split)" if frozenset((i, j)) in just_split else ")")
        for i, j, c in pairs
    ]
    plan = plan_reseed(state.prior, empty, pairs, state.splits)
    state.splits = []
    if plan is not None and state.reseeds_done < settings.model.reseed:
        state.splits = [plan]
        state.reseeds_done += 1
        notes.append(f"re-seeding class {plan[1] + 1} from half of class {plan[0] + 1}")
    return {
        "empty_classes": len(empty),
        "duplicate_classes": len({j for _, j, _ in pairs}),
        "notes": "; ".join(notes),
    }
