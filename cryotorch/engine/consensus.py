"""Maps put on the particles' greyscale (:func:`fit_scale`), and the consensus V̄ that a focus
mask compares outside its region (:func:`consensus_from`)."""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.engine.context import RunContext
from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.state import RunState
from cryotorch.physics.projector import prepare_volumes

__all__ = ["consensus_from", "fit_scale"]


def fit_scale(run: RunContext, maps: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
    """``(k,)`` least-squares greyscale of each map ``(k, d, d, d)`` against up to 2,000
    particles.

    ``s_k = Σ_ij w_j Re(conj(c_ij A_kij) X_ij) / Σ_ij w_j |c_ij A_kij|²`` over the shells of
    the initial resolution, ``w = 1/σ²``: maps from another program (or another
    normalisation) are put on the particles' scale (RELION needs ``--firstiter_cc`` here).
    """
    rng = np.random.default_rng([run.settings.seed, 1])
    rows = rng.permutation(run.n)[: min(run.n, 2000)]
    volumes = prepare_volumes(maps, run.settings.model.pad)
    max_shell = run.resolution.max_shell(0, run.d, run.pixel_size)
    num = torch.zeros(maps.shape[0], dtype=torch.float64, device=run.device)
    den = torch.zeros_like(num)
    for batch in run.batches(rows):
        model = batch.ctf[:, None] * run.estep(volumes, batch, noise, max_shell).projections
        w = noise.pixel_weights(batch.optics_group, max_shell)[:, None]
        num += (w * (model.conj() * batch.spectra[:, None]).real).sum((0, 2, 3)).double()
        den += (w * (model.real**2 + model.imag**2)).sum((0, 2, 3)).double()
    run.group.sum_(num, den)
    if not bool((den > 0).all()):
        raise ValueError("a given map is empty (zero) at the initial resolution")
    return (num / den).to(run.dtype)


def consensus_from(
    run: RunContext, state: RunState, stats: SufficientStatistics | None, noise: NoiseModel
) -> torch.Tensor | None:
    """V̄ ``(d, d, d)`` for a focus mask (None without one): the given reference, fitted to
    the particles once (kept in ``state.fitted_reference``), else the reconstruction of all
    particles from ``stats``."""
    if run.focus is None:
        return None
    if run.reference is not None:
        if state.fitted_reference is None:
            given = run.reference.to(run.device, run.dtype)[None] * run.mask
            scale = fit_scale(run, given, noise)
            state.fitted_reference = (given * scale[:, None, None, None])[0]
        return state.fitted_reference
    assert stats is not None, "the consensus of all particles needs their statistics"
    everyone = run.mstep.symmetrised(stats.summed_over_classes())
    return update_maps(
        everyone, run.d, run.settings.model.pad, run.settings.model.tau2_fudge, run.mask
    )[0]
