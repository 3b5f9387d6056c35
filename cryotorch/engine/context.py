"""What stays fixed through a run (:class:`RunContext`): the particles' batches, the settings,
the masks, the E-step, the posterior layers and the M-step's regulariser; what changes lives
in :class:`~cryotorch.engine.state.RunState`, which every method here is handed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cryotorch.engine.batches import BatchMaker, ParticleBatch
from cryotorch.engine.class_health import split_posteriors
from cryotorch.engine.distributed import ProcessGroup
from cryotorch.engine.estep import EStep, EStepResult
from cryotorch.engine.mstep import MStep, SufficientStatistics, accumulate_statistics
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.posterior import (
    ClassSimilarity,
    SimilarityForm,
    StraightThroughHard,
    tune_similarity,
)
from cryotorch.engine.regularisers import Regulariser, make_regulariser
from cryotorch.engine.schedules import ResolutionSchedule, SimilaritySchedule
from cryotorch.engine.settings import ClassificationSettings, Masks
from cryotorch.engine.state import RunState
from cryotorch.physics.masks import solvent_sphere

__all__ = ["INSERTION_MARGIN", "Monitor", "RunContext"]

# Shells past the next E-step's that an iteration's M-step sums still take (RELION inserts to
# its current_size, 10 shells past its resolution at its default --incr_size).
INSERTION_MARGIN = 3

# Called after every iteration with its table row, the class maps (k, d, d, d) and the latest
# class (argmax) of every particle, -1 where a particle has not been seen yet. A monitor with an
# ``annotate(entry, assignment)`` method may first add columns to the row (RunMonitor: the
# accuracy against known classes), which the history and the checkpoints then keep.
Monitor = Callable[[dict, torch.Tensor, np.ndarray], None]


class RunContext:
    """The fixed parts of one run of ``settings`` on the particles of ``batcher``."""

    def __init__(
        self,
        batcher: BatchMaker,
        settings: ClassificationSettings,
        masks: Masks,
        regulariser: Regulariser | None = None,
        monitor: Monitor | None = None,
        similarity_layer: nn.Module | None = None,
    ):
        self.batcher = batcher
        self.settings = settings
        self.monitor = monitor
        self.d = batcher.d
        self.pixel_size = float(batcher.pixel_size[0])
        self.n = len(batcher.table)
        self.k = settings.model.num_classes
        self.n_groups = len(batcher.table.optics)
        self.device = batcher.device
        self.dtype = batcher.dtype
        self.group = ProcessGroup(self.device)
        prefetch = settings.optim.prefetch  # None: where it pays, on CUDA (not on 2 CPU cores)
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self.estep = EStep(optimal_scale=settings.model.contrast == "optimal")
        # A str in the settings (OmegaConf has no Literal), checked there to be a form.
        form = cast(SimilarityForm, settings.posterior.similarity.form)
        self.similarity = similarity_layer or ClassSimilarity(form)  # (scores, β) -> γ
        self.hard_layer = StraightThroughHard()
        self.hard_schedule = settings.posterior.hard_schedule()
        self.resolution = ResolutionSchedule(
            settings.model.initial_resolution,
            settings.model.target_resolution,
            settings.model.resolution_reach_at,
        )
        diameter = settings.model.particle_diameter or 0.9 * self.d * self.pixel_size
        sphere = solvent_sphere(self.d, self.pixel_size, diameter, settings.mask.soft_edge_angstrom)
        self.sphere = sphere.to(device=self.device, dtype=self.dtype)  # (d, d, d)
        # mask.solvent=auto without a reference: the start makes the mask from all particles'
        # reconstruction (set_solvent_mask); until then, and for mask.solvent=sphere, the sphere.
        self.mask_from_data = masks.solvent is None and settings.mask.solvent == "auto"
        if masks.solvent is None:
            self.mask = self.sphere
        else:
            self.mask = masks.solvent.to(device=self.device, dtype=self.dtype)
        self.focus = None if masks.focus is None else masks.focus.to(self.device, self.dtype)
        self.reference = masks.consensus  # a given V̄ for the focus mask (any greyscale)
        self.regulariser = regulariser or make_regulariser(
            settings.model.regulariser, settings.model.tau2_fudge
        )
        self.mstep = MStep(
            self.regulariser,
            self.mask,
            self.k,
            settings.model.pad,
            self.pixel_size,
            settings.model.symmetry,
        )
        self.halves = None  # (n,) 0/1 half-set of each particle, when the regulariser uses them
        if self.regulariser.half_sets:
            subset = batcher.table.random_subset
            if not np.isin(subset, (1, 2)).all():  # none in the file: a seeded split
                subset = np.random.default_rng([settings.seed, 2]).integers(1, 3, self.n)
            self.halves = torch.as_tensor(subset - 1, device=self.device)
        # Said in the next row of the table, not kept in the state:
        self.notes: list[str] = []
        self.regulariser_columns: dict[str, float] = {}  # the last M-step's own columns
        self.clock = time.perf_counter()  # end of the last iteration

    def progress(self, total: int, label: str | None, unit: str, done: int = 0) -> tqdm:
        """A progress bar of ``total`` ``unit``, ``done`` of them already, with the time left;
        shown on a terminal, by rank 0, with progress on, when there is a ``label``; it goes
        when done (the table's rows stay)."""
        show = self.settings.progress and label and self.group.is_main
        return tqdm(
            total=total,
            initial=done,
            desc=label,
            unit=unit,
            leave=False,
            dynamic_ncols=True,
            disable=None if show else True,  # None: off when not a terminal
        )

    def batches(self, rows: np.ndarray, label: str | None = None) -> Iterator[ParticleBatch]:
        """Batches of this rank's share of ``rows`` (all of them in a single process); with a
        ``label``, under a progress bar (if progress is on). Callers sum what they add up over
        the ranks (``self.group.sum_``)."""
        rows = self.group.shard(rows)
        size = self.settings.optim.batch_size
        bar = self.progress(len(rows), label, "particle")
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        if not self.prefetch or len(chunks) < 2:
            with bar:
                for chunk in chunks:
                    yield self.batcher(chunk)
                    bar.update(len(chunk))
            return
        # Reading and Fourier-cropping batch i + 1 (a thread) overlaps the work on batch i.
        with bar, ThreadPoolExecutor(max_workers=1) as pool:
            coming = pool.submit(self.batcher.load, chunks[0])
            for i, chunk in enumerate(chunks):
                batch = coming.result()
                if i + 1 < len(chunks):
                    coming = pool.submit(self.batcher.load, chunks[i + 1])
                yield self.batcher.add_geometry(batch)
                bar.update(len(chunk))

    def set_solvent_mask(self, mask: torch.Tensor) -> None:
        """Use ``mask (d, d, d)`` as the solvent mask from here on (the M-step's too)."""
        self.mask = mask.to(device=self.device, dtype=self.dtype)
        self.mstep.solvent_mask = self.mask

    # -- the posterior layers --------------------------------------------------------------
    def similarity_schedule(self, state: RunState) -> SimilaritySchedule:
        """β's schedule, starting from the auto-tuned β if there is one."""
        return self.settings.posterior.similarity.schedule(state.tuned_beta)

    def beta_and_hard(self, state: RunState) -> tuple[float, bool]:
        """This iteration's class similarity β and whether force-hard is on."""
        beta = self.similarity_schedule(state).beta(state.iteration)
        return beta, self.hard_schedule.is_hard(state.iteration, beta)

    def layers(self, scores: torch.Tensor, rows: np.ndarray, state: RunState) -> torch.Tensor:
        """``(b, k)`` class weights from log-scores ``ℓ + log π`` ``(b, k)``: class similarity,
        force hard, then the re-seeding splits of this iteration. The first batch of an
        auto-tuned run sets ``state.tuned_beta`` (rank 0's)."""
        similarity = self.settings.posterior.similarity
        if similarity.auto_tune and state.tuned_beta is None:
            target = similarity.target_ess_fraction
            tuned = tune_similarity(scores.detach(), self.similarity, target)
            state.tuned_beta = self.group.broadcast_float(tuned)
            self.notes.append(f"class similarity tuned: β0 = {state.tuned_beta:.3f}")
        beta, hard = self.beta_and_hard(state)
        gamma = self.similarity(scores, beta)
        if hard:
            gamma = self.hard_layer(gamma)
        return split_posteriors(gamma, rows, state.splits, self.settings.seed + state.iteration)

    # -- the M-step ------------------------------------------------------------------------
    def zeros(self, with_maps: bool = True) -> SufficientStatistics:
        """Empty statistics of the K classes (per half-set if the regulariser wants them)."""
        channels = 2 * self.k if self.regulariser.half_sets else self.k
        return SufficientStatistics.zeros(
            channels,
            self.d,
            self.settings.model.pad,
            self.n_groups,
            self.device,
            self.dtype,
            with_maps,
        )

    def accumulate(
        self,
        stats: SufficientStatistics,
        batch: ParticleBatch,
        result: EStepResult | None,
        gamma: torch.Tensor,
        noise: NoiseModel,
        max_shell: int | None = None,
    ) -> None:
        """:func:`accumulate_statistics` (to ``max_shell``), per half-set if the regulariser
        needs them."""
        halves = None if self.halves is None else self.halves[batch.rows]
        accumulate_statistics(stats, batch, result, gamma, noise, halves, max_shell)

    def insertion_shell(self, state: RunState) -> int | None:
        """The last shell an E-step pass of ``state.iteration`` inserts into the map sums: the
        next iteration's E-step shells and :data:`INSERTION_MARGIN` beyond (the maps are only
        compared with the particles there; the margin keeps the trilinear footprint and the
        solvent mask's spread of the shells beyond); None (all) once that is the whole box."""
        next_shell = self.resolution.max_shell(state.iteration + 1, self.d, self.pixel_size)
        shell = next_shell + INSERTION_MARGIN
        return None if shell >= self.d // 2 else shell

    def m_step(
        self, stats: SufficientStatistics, noise: NoiseModel
    ) -> tuple[torch.Tensor, torch.Tensor, NoiseModel]:
        """New maps ``(k, d, d, d)``, class priors ``(k,)`` and noise from ``stats``: the
        :class:`MStep`, whose table columns this iteration's row reports."""
        maps, prior, noise, self.regulariser_columns = self.mstep(stats, noise)
        return maps, prior, noise

    def estep_maps(self, state: RunState, maps: torch.Tensor | None = None) -> torch.Tensor:
        """What the E-step compares the particles with: the maps (``state.maps`` unless
        ``maps`` is given), or with a focus mask F, ``S · (F · V_k + (1 - F) · V̄)``."""
        maps = state.maps if maps is None else maps
        if self.focus is None:
            return maps
        assert state.consensus is not None  # consensus_from sets it wherever there is a focus
        return self.mask * (self.focus * maps + (1 - self.focus) * state.consensus)
