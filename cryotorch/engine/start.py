"""The state a run starts from (:func:`initial_state`): the noise from the images' power, and
the class maps from a random assignment (RELION's start), from PCA of small reconstructions
(cryoSPARC's, :mod:`cryotorch.engine.initialisation`) or from given maps."""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.engine.consensus import consensus_from, fit_scale, solvent_mask_from_data
from cryotorch.engine.context import RunContext
from cryotorch.engine.initialisation import cluster_maps
from cryotorch.engine.mstep import SufficientStatistics, update_maps
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.passes import assignment_statistics
from cryotorch.engine.state import RunState
from cryotorch.errors import InputError
from cryotorch.physics.masks import lowpass_3d

__all__ = ["initial_noise", "initial_state"]


def initial_noise(run: RunContext, rng: np.random.Generator) -> NoiseModel:
    """Power per shell and optics group of up to 2,000 images, drawn with ``rng`` (signal
    included: fine at cryo-EM SNRs). An :class:`InputError` if every image drawn is blank (all
    zero, or constant): there is nothing to classify, and the maps would be all zero."""
    rows = rng.permutation(run.n)[: min(run.n, 2000)]
    probe = NoiseModel.flat(run.n_groups, run.d, run.dtype, run.device)
    sums = torch.zeros(run.n_groups, run.d // 2 + 1, dtype=torch.float64, device=run.device)
    counts = torch.zeros_like(sums)
    for batch in run.batches(rows):
        power = probe.shell_sums(batch.spectra.real**2 + batch.spectra.imag**2)
        batch_sums, batch_counts = probe.sums_by_group(
            power, batch.optics_group, batch.shell_counts
        )
        sums += batch_sums
        counts += batch_counts
    run.group.sum_(sums, counts)
    noise = NoiseModel.from_power_sums(sums, counts, run.dtype)
    if noise.blank():
        table = run.batcher.table
        source = table.source.path if table.source is not None else "particles"
        column = "blob/path" if table.source and table.source.format == "cs" else "rlnImageName"
        paths = sorted({str(path) for path in table.image_path[rows]})
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise InputError(
            source,
            column,
            f"every image is blank (all zero or constant: the {len(rows)} read, in {shown}): "
            "there is nothing to classify",
        )
    return noise


def initial_state(run: RunContext, initial_maps: torch.Tensor | None) -> RunState:
    """Iteration 0's state: maps ``(k, d, d, d)`` low-passed to the initial resolution and
    masked, equal class priors, the initial noise; ``initial_maps`` at the working box (any
    greyscale: fitted to the particles) instead of a start of the settings' ``init``."""
    settings, k, n, d = run.settings, run.k, run.n, run.d
    rng = np.random.default_rng(settings.seed)
    noise = initial_noise(run, rng)
    state = RunState(
        maps=torch.zeros(k, d, d, d, dtype=run.dtype, device=run.device),  # set below
        prior=torch.full((k,), 1.0 / k, dtype=run.dtype, device=run.device),
        noise=noise,
        rng=rng,
        order=np.zeros(0, np.int64),  # set below, after the start's draws
        posteriors=np.zeros((n, k), dtype=np.float32),
        posteriors_estep=np.zeros((n, k), dtype=np.float32),
        assignment=np.full(n, -1),
    )
    stats = None
    pca = initial_maps is None and settings.model.init == "pca" and k > 1
    if run.mask_from_data and (initial_maps is not None or pca):
        # Any start but the random one: a pass of its own for all particles' reconstruction.
        everyone = assignment_statistics(run, np.zeros(n, np.int64), noise, label="solvent mask")
        _mask_from_data(run, state, everyone)
    if pca:
        # cryoSPARC's PCA start (see engine/initialisation.py).
        m = min(settings.model.pca_subsets, n)
        subsets = rng.permutation(np.arange(n) % m)
        small = assignment_statistics(run, subsets, noise, n_classes=m, label="PCA start")
        small = run.mstep.symmetrised(small)
        small_maps = update_maps(small, d, settings.model.pad, settings.model.tau2_fudge, run.mask)
        small_maps = lowpass_3d(small_maps, settings.model.initial_resolution, run.pixel_size)
        labels = cluster_maps(small_maps * run.mask, k, rng)
        stats = assignment_statistics(run, labels[subsets], noise, label="PCA start maps")
        maps, _, _ = run.m_step(stats, noise)
        sizes = "/".join(str(int((labels == j).sum())) for j in range(k))
        run.notes.append(f"PCA start: subsets per class {sizes}")
    elif initial_maps is None:
        # RELION's start: reconstructions from a random assignment of the particles.
        stats = assignment_statistics(run, rng.integers(0, k, n), noise, label="initial maps")
        if run.mask_from_data:  # the K random classes together are all particles
            _mask_from_data(run, state, stats)
        maps, _, _ = run.m_step(stats, noise)
    else:
        if initial_maps.shape != (k, d, d, d):
            raise ValueError(
                f"initial maps are {tuple(initial_maps.shape)}, expected {(k, d, d, d)}"
            )
        maps = initial_maps.to(device=run.device, dtype=run.dtype) * run.mask
        maps = maps * fit_scale(run, maps, noise)[:, None, None, None]
        if run.focus is not None and run.reference is None:  # V̄ from all particles
            stats = assignment_statistics(run, np.zeros(n, np.int64), noise, label="consensus")
    state.maps = lowpass_3d(maps, settings.model.initial_resolution, run.pixel_size) * run.mask
    consensus = consensus_from(run, state, stats, noise)
    if consensus is not None:
        consensus = (
            lowpass_3d(consensus, settings.model.initial_resolution, run.pixel_size) * run.mask
        )
    state.consensus = consensus
    state.order = rng.permutation(n)
    return state


def _mask_from_data(run: RunContext, state: RunState, stats: SufficientStatistics) -> None:
    """Make the solvent mask from all particles' ``stats``, keep it in ``state`` (the
    checkpoint) and use it from here on."""
    state.solvent_mask = solvent_mask_from_data(run, stats)
    run.set_solvent_mask(state.solvent_mask)
