"""Maps put on the particles' greyscale (:func:`fit_scale`), and the consensus V̄ that a focus
mask compares outside its region (:func:`consensus_from`)."""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.engine.context import RunContext
from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.state import RunState
from cryotorch.errors import InputError
from cryotorch.physics.masks import mask_from_map
from cryotorch.physics.projector import prepare_volumes

__all__ = ["consensus_from", "fit_scale", "solvent_mask_from_data"]


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


def solvent_mask_from_data(run: RunContext, stats: SufficientStatistics) -> torch.Tensor:
    """The solvent mask ``(d, d, d)`` of ``mask.solvent=auto`` without a reference, made from
    the particles themselves (cryoSPARC's choice; RELION asks for a sphere): the
    reconstruction of all of them (``stats`` summed over the classes, the M-step's τ² prior,
    inside the sphere of ``model.particle_diameter`` or 90 % of the box), low-passed to
    ``mask.lowpass_angstrom``, kept above ``mask.threshold`` times its maximum, extended by
    ``mask.extend_angstrom`` and softened over ``mask.soft_edge_angstrom``, as
    ``mask.solvent=from_reference`` does with a given map; then times that sphere, so nothing
    outside what the particle may fill is kept."""
    m = run.settings.mask
    everyone = run.mstep.symmetrised(stats.summed_over_classes())
    consensus = update_maps(
        everyone, run.d, run.settings.model.pad, run.settings.model.tau2_fudge, run.sphere
    )[0]
    made = mask_from_map(
        consensus, run.pixel_size, m.threshold, m.extend_angstrom, m.soft_edge_angstrom,
        m.lowpass_angstrom,
    )  # fmt: skip
    made = made * run.sphere
    if not bool((made > 0).any()):  # it would zero every class map (a threshold >= 1, NaN)
        raise InputError(
            "configuration",
            "mask.threshold",
            f"the solvent mask made from the particles (mask.solvent=auto) is empty at "
            f"{m.threshold:g}: expected a fraction of the reconstruction's maximum below 1",
        )
    return made
