"""The classification loop: initial maps, online EM, then full-batch EM until convergence;
or, with ``method="gradient"``, epochs of gradient training (:mod:`cryotorch.engine.gradient`).

Data flow of one iteration: particle rows -> :class:`BatchMaker` (Fourier-cropped images, CTF,
shifts) -> :class:`EStep` (log-likelihoods ``(b, K)``) -> posterior -> class similarity ->
force hard -> :func:`accumulate_statistics` -> :func:`update_maps` (maps, priors, noise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.class_health import (
    duplicate_classes,
    empty_classes,
    plan_reseed,
    split_posteriors,
)
from cryotorch.engine.distributed import ProcessGroup
from cryotorch.engine.estep import EStep, EStepResult, log_posterior
from cryotorch.engine.gradient import (
    ClassMaps,
    GradientSettings,
    free_energy,
    gaussian_normaliser,
    make_optimizer,
)
from cryotorch.engine.initialisation import cluster_maps
from cryotorch.engine.mstep import (
    SufficientStatistics,
    accumulate_statistics,
    update_maps,
)
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.posterior import (
    ClassSimilarity,
    StraightThroughHard,
    effective_sample_size,
    tune_similarity,
)
from cryotorch.engine.regularisers import Regulariser, make_regulariser
from cryotorch.engine.schedules import (
    HardSchedule,
    ResolutionSchedule,
    SimilaritySchedule,
    online_learning_rate,
)
from cryotorch.physics.masks import lowpass_3d, solvent_sphere
from cryotorch.physics.projector import prepare_volumes

__all__ = [
    "CHECKPOINT_FORMAT",
    "ClassificationResult",
    "ClassificationSettings",
    "Masks",
    "classify",
    "settings_dict",
]

CHECKPOINT_FORMAT = 2  # bumped when the checkpoint's keys change


@dataclass(frozen=True)
class ClassificationSettings:
    """How to classify (lengths in Å). See ``configs/`` for the user-facing names."""

    num_classes: int = 2
    seed: int = 0
    target_resolution: float = 5.0
    initial_resolution: float = 20.0  # initial maps low-passed to this; E-step starts here
    resolution_reach_at: int = 20
    particle_diameter: float | None = None  # solvent mask; None: 0.9 of the box
    solvent_edge: float = 8.0  # the spherical solvent mask falls to 0 over this width
    tau2_fudge: float = 4.0
    regulariser: str = "tau2"  # tau2 (RELION's T·τ²) | fsc (cryoSPARC's half-set FSC) | denoise
    contrast: str = "from_input"  # per-particle scale: none | from_input | optimal
    init: str = "random"  # random (RELION: random assignment) | pca (cryoSPARC)
    pca_subsets: int = 20  # random subsets reconstructed for the PCA start
    pad: int = 2
    similarity: SimilaritySchedule = field(default_factory=SimilaritySchedule)
    similarity_form: str = "temperature"
    hard: HardSchedule = field(default_factory=HardSchedule)
    online_epochs: float = 2.0
    batch_per_class: int = 1000
    learning_rate: float = 0.4
    half_life_percent: float = 50.0
    max_iterations: int = 25
    convergence_percent: float = 2.0
    batch_size: int = 512  # particles per E-step call in full passes
    empty_class_fraction: float = 0.01  # a class with a smaller share is reported empty
    duplicate_correlation: float = 0.99  # two maps more alike than this are reported duplicates
    reseed: int = 0  # how many times an empty/duplicate class may be re-seeded (0: report only)
    progress: bool = True  # a progress bar over each full pass
    prefetch: bool = True  # read the next batch in a thread while this one is scored
    method: str = "em"  # em | gradient (optim=gradient)
    gradient: GradientSettings = field(default_factory=GradientSettings)

    def __post_init__(self) -> None:
        if self.method not in ("em", "gradient"):
            raise ValueError(f"optim.method must be em or gradient, got {self.method!r}")
        if self.method == "gradient" and self.regulariser == "fsc":
            raise ValueError(
                "model.regulariser=fsc filters with half-set reconstructions, which gradient "
                "training does not make: use tau2 or denoise with optim=gradient"
            )
        if self.init not in ("random", "pca"):
            raise ValueError(f"model.init must be random or pca, got {self.init!r}")
        if self.contrast not in ("none", "from_input", "optimal"):
            raise ValueError(
                f"model.contrast must be none, from_input or optimal, got {self.contrast!r}"
            )


@dataclass
class Masks:
    """Masks at the working box, each ``(d, d, d)`` in [0, 1].

    ``solvent`` S multiplies every map after each M-step (None: a sphere of
    ``particle_diameter`` whose raised-cosine edge falls to 0 over ``solvent_edge`` Å).
    ``focus`` F restricts what the E-step compares: it scores each particle against
    ``S · (F · V_k + (1 - F) · V̄)``, so outside F every class looks alike
    and only the region inside F decides the class. V̄ is ``consensus`` (any greyscale: fitted
    to the particles) or, if None, the reconstruction of all particles at each M-step.
    """

    solvent: torch.Tensor | None = None
    focus: torch.Tensor | None = None
    consensus: torch.Tensor | None = None


def settings_dict(settings: ClassificationSettings) -> dict:
    """The settings that decide a run's result, as plain values (``progress`` and
    ``prefetch`` left out)."""
    values = asdict(settings)
    values.pop("progress")
    values.pop("prefetch")
    return values


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


# Called after every iteration with its table row, the class maps (k, d, d, d) and the latest
# class (argmax) of every particle, -1 where a particle has not been seen yet. A monitor with an
# ``annotate(entry, assignment)`` method may first add columns to the row (RunMonitor: the
# accuracy against known classes), which the history and the checkpoints then keep.
Monitor = Callable[[dict, torch.Tensor, np.ndarray], None]


class _Engine:
    """State shared by the phases of one run."""

    def __init__(
        self,
        batcher: BatchMaker,
        settings: ClassificationSettings,
        monitor: Monitor | None,
        masks: Masks,
        regulariser: Regulariser | None = None,
    ):
        self.b = batcher
        self.s = settings
        self.monitor = monitor
        self.d = batcher.d
        self.pixel_size = float(batcher.pixel_size[0])
        self.n = len(batcher.table)
        self.k = settings.num_classes
        self.device = batcher.device
        self.dtype = batcher.dtype
        self.rng = np.random.default_rng(settings.seed)
        self.estep = EStep(optimal_scale=settings.contrast == "optimal")
        self.similarity = ClassSimilarity(settings.similarity_form)
        self.hard_layer = StraightThroughHard()
        self.resolution = ResolutionSchedule(
            settings.initial_resolution, settings.target_resolution, settings.resolution_reach_at
        )
        if masks.solvent is None:
            diameter = settings.particle_diameter or 0.9 * self.d * self.pixel_size
            sphere = solvent_sphere(self.d, self.pixel_size, diameter, settings.solvent_edge)
            self.mask = sphere.to(device=self.device, dtype=self.dtype)
        else:
            self.mask = masks.solvent.to(device=self.device, dtype=self.dtype)
        self.focus = None if masks.focus is None else masks.focus.to(self.device, self.dtype)
        self.consensus = None  # V̄ as given, on the particles' greyscale (see consensus_from)
        self.given_consensus = masks.consensus
        self.group = ProcessGroup(self.device)
        self.similarity_schedule = settings.similarity
        self.tuned_beta: float | None = None
        self.notes: list[str] = []  # said in the next row of the table
        self.regulariser = regulariser or make_regulariser(
            settings.regulariser, settings.tau2_fudge
        )
        self.regulariser_columns: dict[str, float] = {}
        self.halves = None  # (n,) 0/1 half-set of each particle, when the regulariser uses them
        if self.regulariser.half_sets:
            subset = batcher.table.random_subset
            if not np.isin(subset, (1, 2)).all():  # none in the file: a seeded split
                subset = np.random.default_rng([settings.seed, 2]).integers(1, 3, self.n)
            self.halves = torch.as_tensor(subset - 1, device=self.device)
        self.n_groups = len(batcher.table.optics)
        self.assignment = np.full(self.n, -1)
        self.iteration = 0
        self.history: list[dict] = []
        self.clock = time.perf_counter()

    # -- pieces --------------------------------------------------------------------------------
    def batches(self, rows: np.ndarray, label: str | None = None):
        """Batches of this rank's share of ``rows`` (all of them in a single process); with a
        ``label``, under a progress bar (if progress is on). Callers sum what they add up over
        the ranks (``self.group.sum_``)."""
        rows = self.group.shard(rows)
        show = self.s.progress and label and self.group.is_main
        bar = tqdm(
            total=len(rows),
            desc=label,
            unit="particle",
            leave=False,
            disable=None if show else True,  # None: off when not a terminal
        )
        chunks = [rows[i : i + self.s.batch_size] for i in range(0, len(rows), self.s.batch_size)]
        if not self.s.prefetch or len(chunks) < 2:
            with bar:
                for chunk in chunks:
                    yield self.b(chunk)
                    bar.update(len(chunk))
            return
        # Reading and Fourier-cropping batch i + 1 (a thread) overlaps the work on batch i.
        with bar, ThreadPoolExecutor(max_workers=1) as pool:
            coming = pool.submit(self.b.load, chunks[0])
            for i, chunk in enumerate(chunks):
                batch = coming.result()
                if i + 1 < len(chunks):
                    coming = pool.submit(self.b.load, chunks[i + 1])
                yield self.b.add_geometry(batch)
                bar.update(len(chunk))

    def zeros(self) -> SufficientStatistics:
        channels = 2 * self.k if self.regulariser.half_sets else self.k
        return SufficientStatistics.zeros(
            channels, self.d, self.s.pad, self.n_groups, self.device, self.dtype
        )

    def accumulate(self, stats, batch, result, gamma, noise) -> None:
        """:func:`accumulate_statistics`, per half-set if the regulariser needs them."""
        halves = None if self.halves is None else self.halves[batch.rows]
        accumulate_statistics(stats, batch, result, gamma, noise, halves)

    def initial_noise(self) -> NoiseModel:
        """Power per shell of up to 2,000 images (signal included: fine at cryo-EM SNRs)."""
        rows = self.rng.permutation(self.n)[: min(self.n, 2000)]
        probe = NoiseModel.flat(self.n_groups, self.d, self.dtype, self.device)
        sums = torch.zeros(self.n_groups, self.d // 2 + 1, dtype=torch.float64, device=self.device)
        counts = torch.zeros_like(sums)
        for batch in self.batches(rows):
            power = probe.shell_sums(batch.spectra.real**2 + batch.spectra.imag**2)
            batch_sums, batch_counts = probe.sums_by_group(power, batch.optics_group)
            sums += batch_sums
            counts += batch_counts
        self.group.sum_(sums, counts)
        return NoiseModel.from_power_sums(sums, counts, self.dtype)

    def assignment_statistics(
        self, classes: np.ndarray, noise: NoiseModel, n_classes: int | None = None
    ) -> SufficientStatistics:
        """Statistics of the hard assignment ``classes (n,)`` (0-based) of every particle: into
        the K classes (per half-set if the regulariser wants them), or, with ``n_classes``,
        into that many plain groups."""
        groups = n_classes or self.k
        if n_classes is None:
            stats = self.zeros()
        else:
            stats = SufficientStatistics.zeros(
                groups, self.d, self.s.pad, self.n_groups, self.device, self.dtype
            )
        classes = torch.as_tensor(classes, device=self.device)
        for batch in self.batches(np.arange(self.n)):
            gamma = torch.nn.functional.one_hot(classes[batch.rows], groups).to(self.dtype)
            no_residual = torch.zeros(
                len(batch.rows), groups, self.d // 2 + 1, device=self.device, dtype=self.dtype
            )
            result = EStepResult(None, no_residual, None)
            if n_classes is None:
                self.accumulate(stats, batch, result, gamma, noise)
            else:
                accumulate_statistics(stats, batch, result, gamma, noise)
        self.group.sum_(*stats.tensors())
        stats.noise_count.zero_()  # no residuals yet: the noise stays the initial estimate
        return stats

    def fit_scale(self, maps: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
        """``(k,)`` least-squares greyscale of each map against up to 2,000 particles.

        ``s_k = Σ_ij w_j Re(conj(c_ij A_kij) X_ij) / Σ_ij w_j |c_ij A_kij|²`` over the shells of
        the initial resolution, ``w = 1/σ²``: maps from another program (or another
        normalisation) are put on the particles' scale (RELION needs ``--firstiter_cc`` here).
        """
        rows = np.random.default_rng([self.s.seed, 1]).permutation(self.n)[: min(self.n, 2000)]
        volumes = prepare_volumes(maps, self.s.pad)
        max_shell = self.resolution.max_shell(0, self.d, self.pixel_size)
        num = torch.zeros(maps.shape[0], dtype=torch.float64, device=self.device)
        den = torch.zeros_like(num)
        for batch in self.batches(rows):
            model = batch.ctf[:, None] * self.estep(volumes, batch, noise, max_shell).projections
            w = noise.pixel_weights(batch.optics_group, max_shell)[:, None]
            num += (w * (model.conj() * batch.spectra[:, None]).real).sum((0, 2, 3)).double()
            den += (w * (model.real**2 + model.imag**2)).sum((0, 2, 3)).double()
        self.group.sum_(num, den)
        if not bool((den > 0).all()):
            raise ValueError("a given map is empty (zero) at the initial resolution")
        return (num / den).to(self.dtype)

    def layers(
        self, scores: torch.Tensor, rows: np.ndarray, splits: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, float, bool]:
        """Class similarity, force hard, then the re-seeding splits of this iteration."""
        if self.s.similarity.auto_tune and self.tuned_beta is None:
            target = self.s.similarity.target_ess_fraction
            tuned = tune_similarity(scores.detach(), self.similarity, target)
            self.set_tuned_beta(self.group.broadcast_float(tuned))  # rank 0's first batch
            self.notes.append(f"class similarity tuned: β0 = {self.tuned_beta:.3f}")
        beta, hard = self.beta_and_hard()
        gamma = self.similarity(scores, beta)
        if hard:
            gamma = self.hard_layer(gamma)
        gamma = split_posteriors(gamma, rows, splits, self.s.seed + self.iteration)
        return gamma, beta, hard

    def beta_and_hard(self) -> tuple[float, bool]:
        """This iteration's class similarity β and whether force-hard is on."""
        beta = self.similarity_schedule.beta(self.iteration)
        return beta, self.s.hard.is_hard(self.iteration, beta)

    def set_tuned_beta(self, beta: float) -> None:
        self.tuned_beta = beta
        self.similarity_schedule = replace(self.s.similarity, start=beta)

    def check_classes(self, state: _RunState) -> dict:
        """Report empty and duplicate classes; plan a re-seed for the next iteration if any
        are left (``state.splits``). Returns the table's columns for them."""
        empty = empty_classes(state.prior, self.s.empty_class_fraction)
        resolution = self.resolution.resolution(self.iteration)
        pairs = duplicate_classes(
            state.maps, self.mask, resolution, self.pixel_size, self.s.duplicate_correlation
        )
        just_split = {frozenset(pair) for pair in state.splits}  # made in this iteration
        notes, self.notes = self.notes, []
        notes += [f"class {k + 1} empty ({100 * float(state.prior[k]):.2f} %)" for k in empty]
        notes += [
            f"classes {i + 1} and {j + 1} alike (correlation {c:.4f}"
            + ("; just split)" if frozenset((i, j)) in just_split else ")")
            for i, j, c in pairs
        ]
        plan = plan_reseed(state.prior, empty, pairs, state.splits)
        state.splits = []
        if plan is not None and state.reseeds_done < self.s.reseed:
            state.splits = [plan]
            state.reseeds_done += 1
            notes.append(f"re-seeding class {plan[1] + 1} from half of class {plan[0] + 1}")
        return {
            "empty_classes": len(empty),
            "duplicate_classes": len({j for _, j, _ in pairs}),
            "notes": "; ".join(notes),
        }

    def estep_maps(self, state: _RunState, maps: torch.Tensor | None = None) -> torch.Tensor:
        """What the E-step compares the particles with: the maps (``state.maps`` unless
        ``maps`` is given), or with a focus mask F, ``S · (F · V_k + (1 - F) · V̄)``."""
        maps = state.maps if maps is None else maps
        if self.focus is None:
            return maps
        return self.mask * (self.focus * maps + (1 - self.focus) * state.consensus)

    def consensus_from(self, stats: SufficientStatistics, noise: NoiseModel) -> torch.Tensor | None:
        """V̄ ``(d, d, d)`` for a focus mask: the given map (fitted once), else all particles."""
        if self.focus is None:
            return None
        if self.given_consensus is not None:
            if self.consensus is None:
                given = self.given_consensus.to(self.device, self.dtype)[None] * self.mask
                self.consensus = (given * self.fit_scale(given, noise)[:, None, None, None])[0]
            return self.consensus
        everyone = stats.summed_over_classes()
        return update_maps(everyone, self.d, self.s.pad, self.s.tau2_fudge, self.mask)[0]

    def m_step(self, stats: SufficientStatistics, noise: NoiseModel):
        """New maps (through the regulariser), class priors and noise from ``stats``."""
        new_maps, self.regulariser_columns = self.regulariser(
            stats, self.k, self.d, self.s.pad, self.mask, self.pixel_size
        )
        class_weight = stats.merged_halves(self.k).class_weight
        prior = (class_weight / class_weight.sum().clamp_min(1e-300)).to(self.dtype)
        if stats.noise_count.sum() > 0:
            noise = NoiseModel.from_power_sums(stats.noise_sum, stats.noise_count, self.dtype)
        return new_maps, prior, noise

    def entry(
        self, phase: str, gamma: torch.Tensor, loglik_mean: float, changed: float | None, beta, hard
    ) -> dict:
        """This iteration's row of the table (``iterations.csv``)."""
        sizes = gamma.sum(0).double()
        entry = {
            "iteration": self.iteration,
            "phase": phase,
            "beta": beta,
            "hard": hard,
            "resolution": self.resolution.resolution(self.iteration),
            "percent_changed": changed,
            "mean_class_ess": float(effective_sample_size(gamma.double()).mean()),
            "log_likelihood": loglik_mean,
            **{f"class_{i + 1:03d}_fraction": float(sizes[i] / sizes.sum()) for i in range(self.k)},
            **self.regulariser_columns,
        }
        now = time.perf_counter()
        entry["seconds"] = now - self.clock
        self.clock = now
        return entry

    def finish_iteration(self, state: _RunState, entry: dict, checkpoint) -> None:
        """Record ``entry`` (with the columns the monitor's ``annotate`` adds, if it has one),
        count the iteration, checkpoint, then tell the monitor."""
        if self.group.is_main and hasattr(self.monitor, "annotate"):
            self.monitor.annotate(entry, self.assignment)
        self.history.append(entry)
        self.iteration += 1
        if not self.group.is_main:
            return
        if checkpoint is not None:
            checkpoint(_state_dict(self, state))
        if self.monitor is not None:
            self.monitor(entry, state.maps, self.assignment.copy())

    def score_batch(self, batch, volumes, noise, prior):
        max_shell = self.resolution.max_shell(self.iteration, self.d, self.pixel_size)
        result = self.estep(volumes, batch, noise, max_shell)
        scores = result.loglik + torch.log(prior.clamp_min(1e-30))
        return result, scores

    def switched(self, rows: np.ndarray, assignment: np.ndarray) -> float | None:
        seen = self.assignment[rows] >= 0
        changed = (
            float((self.assignment[rows][seen] != assignment[seen]).mean() * 100)
            if seen.any()
            else None  # nothing to compare with yet
        )
        self.assignment[rows] = assignment
        return changed


@dataclass
class _RunState:
    """What one iteration hands the next (with the engine's iteration count, rng, class
    assignment and history): all a checkpoint needs."""

    maps: torch.Tensor  # (k, d, d, d)
    prior: torch.Tensor  # (k,)
    noise: NoiseModel
    order: np.ndarray  # online EM's current permutation of the particles
    posteriors: np.ndarray  # (n, k) float32, filled by full passes
    posteriors_estep: np.ndarray
    running: SufficientStatistics | None = None  # online EM's mixed statistics
    online_step: int = 0
    full_pass: int = 0
    finished: bool = False
    consensus: torch.Tensor | None = None  # V̄ (d, d, d) when a focus mask is used
    splits: list[tuple[int, int]] = field(default_factory=list)  # re-seeds of this iteration
    reseeds_done: int = 0
    gradient: dict | None = None  # gradient training: ClassMaps and optimiser state dicts


def _initial_state(e: _Engine, initial_maps: torch.Tensor | None) -> _RunState:
    noise = e.initial_noise()
    if initial_maps is None and e.s.init == "pca" and e.k > 1:
        # cryoSPARC's PCA start (see engine/initialisation.py).
        m = min(e.s.pca_subsets, e.n)
        subsets = e.rng.permutation(np.arange(e.n) % m)
        small = e.assignment_statistics(subsets, noise, n_classes=m)
        small_maps = update_maps(small, e.d, e.s.pad, e.s.tau2_fudge, e.mask)
        small_maps = lowpass_3d(small_maps, e.s.initial_resolution, e.pixel_size) * e.mask
        labels = cluster_maps(small_maps, e.k, e.rng)
        stats = e.assignment_statistics(labels[subsets], noise)
        maps, _, _ = e.m_step(stats, noise)
        e.notes.append(
            "PCA start: subsets per class "
            + "/".join(str(int((labels == j).sum())) for j in range(e.k))
        )
    elif initial_maps is None:
        # RELION's start: reconstructions from a random assignment of the particles.
        stats = e.assignment_statistics(e.rng.integers(0, e.k, e.n), noise)
        maps, _, _ = e.m_step(stats, noise)
    else:
        if initial_maps.shape != (e.k, e.d, e.d, e.d):
            raise ValueError(
                f"initial maps are {tuple(initial_maps.shape)}, expected {(e.k, e.d, e.d, e.d)}"
            )
        maps = initial_maps.to(device=e.device, dtype=e.dtype) * e.mask
        maps = maps * e.fit_scale(maps, noise)[:, None, None, None]
        needs_everyone = e.focus is not None and e.given_consensus is None
        stats = e.assignment_statistics(np.zeros(e.n, np.int64), noise) if needs_everyone else None
    maps = lowpass_3d(maps, e.s.initial_resolution, e.pixel_size) * e.mask
    consensus = e.consensus_from(stats, noise)
    return _RunState(
        maps=maps,
        prior=torch.full((e.k,), 1.0 / e.k, dtype=e.dtype, device=e.device),
        noise=noise,
        order=e.rng.permutation(e.n),
        posteriors=np.zeros((e.n, e.k), dtype=np.float32),
        posteriors_estep=np.zeros((e.n, e.k), dtype=np.float32),
        consensus=None
        if consensus is None
        else lowpass_3d(consensus, e.s.initial_resolution, e.pixel_size) * e.mask,
    )


def _state_dict(e: _Engine, state: _RunState) -> dict:
    """The run's state as tensors and plain values (loads with ``weights_only=True``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "settings": settings_dict(e.s),
        "n_particles": e.n,
        "box": e.d,
        "iteration": e.iteration,
        "online_step": state.online_step,
        "full_pass": state.full_pass,
        "finished": state.finished,
        "splits": [list(pair) for pair in state.splits],
        "reseeds_done": state.reseeds_done,
        "maps": state.maps.cpu(),
        "prior": state.prior.cpu(),
        "noise_power": state.noise.power.cpu(),
        "consensus": None if state.consensus is None else state.consensus.cpu(),
        "running": None
        if state.running is None
        else {k: v.cpu() for k, v in state.running.as_dict().items()},
        "order": torch.from_numpy(state.order),
        "assignment": torch.from_numpy(e.assignment),
        "posteriors": torch.from_numpy(state.posteriors),
        "posteriors_estep": torch.from_numpy(state.posteriors_estep),
        "rng": e.rng.bit_generator.state,
        "tuned_beta": e.tuned_beta,
        "history": list(e.history),
        "gradient": None if state.gradient is None else _to_cpu(state.gradient),
    }


def _to_cpu(tree):
    """A copy of nested dicts / lists of tensors with every tensor on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {key: _to_cpu(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_cpu(value) for value in tree)
    return tree


def _state_from_dict(e: _Engine, sd: dict) -> _RunState:
    """Inverse of :func:`_state_dict` (the caller has checked that the settings match)."""

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(e.device)

    e.iteration = int(sd["iteration"])
    e.assignment = sd["assignment"].numpy().copy()
    e.history = list(sd["history"])
    e.rng.bit_generator.state = sd["rng"]
    if sd["tuned_beta"] is not None:
        e.set_tuned_beta(float(sd["tuned_beta"]))
    running = sd["running"]
    return _RunState(
        maps=dev(sd["maps"]),
        prior=dev(sd["prior"]),
        noise=NoiseModel(dev(sd["noise_power"])),
        consensus=None if sd["consensus"] is None else dev(sd["consensus"]),
        order=sd["order"].numpy().copy(),
        posteriors=sd["posteriors"].numpy().copy(),
        posteriors_estep=sd["posteriors_estep"].numpy().copy(),
        running=None
        if running is None
        else SufficientStatistics(**{k: dev(v) for k, v in running.items()}),
        online_step=int(sd["online_step"]),
        full_pass=int(sd["full_pass"]),
        finished=bool(sd["finished"]),
        splits=[(int(a), int(b)) for a, b in sd["splits"]],
        reseeds_done=int(sd["reseeds_done"]),
        gradient=sd["gradient"],
    )


def _online_steps(e: _Engine) -> tuple[int, int]:
    """Mini-batch size ``batch_per_class x K`` and number of online-EM steps."""
    batch_n = min(e.n, e.s.batch_per_class * e.k)
    n_online = math.ceil(e.s.online_epochs * e.n / batch_n) if e.s.online_epochs > 0 else 0
    return batch_n, n_online


def classify(
    batcher: BatchMaker,
    settings: ClassificationSettings,
    monitor: Monitor | None = None,
    initial_maps: torch.Tensor | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    masks: Masks | None = None,
    regulariser: Regulariser | None = None,
) -> ClassificationResult:
    """Classify the particles of ``batcher`` into ``settings.num_classes`` classes.

    ``initial_maps (k, d, d, d)`` at the working box, any greyscale: start from these (class
    ``k`` keeps their order); without them, from reconstructions of a random assignment of the
    particles to the K classes (RELION's start). Either way low-passed to the initial
    resolution.

    ``checkpoint`` is called after every iteration with the run's state (a dict of tensors and
    plain values, see :mod:`cryotorch.engine.checkpoint`); ``resume``, such a state, continues
    the run from there: the result is bit for bit that of the uninterrupted run.

    ``masks``: the solvent mask, and a focus mask with its consensus map (see :class:`Masks`).
    ``regulariser``: your own :class:`Regulariser` instead of ``settings.regulariser``'s (a
    checkpoint records the settings, not this object: resume with the same one).
    """
    e = _Engine(batcher, settings, monitor, masks or Masks(), regulariser)
    if settings.num_classes > e.n:
        raise ValueError(
            f"model.num_classes = {settings.num_classes} is more than the {e.n} particles"
        )
    if resume is None:
        state = _initial_state(e, initial_maps)
    else:
        state = _state_from_dict(e, resume)
        if monitor is not None and hasattr(monitor, "restore"):
            monitor.restore(e.history)
    if settings.method == "gradient":
        _gradient_epochs(e, state, checkpoint)
        return _result(e, state)
    batch_n, n_online = _online_steps(e)

    # Online EM: mini-batches of batch_per_class x K particles; the rate mixes the statistics.
    while not state.finished and state.online_step < n_online:
        step = state.online_step
        start = (step * batch_n) % e.n
        if start + batch_n > e.n:
            state.order = e.rng.permutation(e.n)
            start = 0
        rows = state.order[start : start + batch_n]
        volumes = prepare_volumes(e.estep_maps(state), settings.pad)
        batch_stats = e.zeros()
        gamma = torch.zeros(len(rows), e.k, device=e.device, dtype=e.dtype)  # all ranks' rows
        mine = e.group.shard(np.arange(len(rows)))
        loglik = torch.zeros(2, dtype=torch.float64, device=e.device)  # sum, count
        done = 0
        for batch in e.batches(rows):
            result, scores = e.score_batch(batch, volumes, state.noise, state.prior)
            gamma_batch, _, _ = e.layers(scores, batch.rows, state.splits)
            e.accumulate(batch_stats, batch, result, gamma_batch.detach(), state.noise)
            gamma[mine[done : done + len(batch.rows)]] = gamma_batch.detach()
            done += len(batch.rows)
            loglik[0] += torch.logsumexp(scores, 1).double().sum()
            loglik[1] += len(batch.rows)
        e.group.sum_(*batch_stats.tensors(), gamma, loglik)
        beta, hard = e.beta_and_hard()
        batch_stats.scale_(e.n / len(rows))
        rate = online_learning_rate(
            step, n_online, settings.learning_rate, settings.half_life_percent
        )
        state.running = (
            batch_stats
            if state.running is None
            else state.running.scale_(1 - rate).add_(batch_stats, rate)
        )
        state.consensus = e.consensus_from(state.running, state.noise)
        state.maps, state.prior, state.noise = e.m_step(state.running, state.noise)
        changed = e.switched(rows, gamma.argmax(1).cpu().numpy())
        entry = e.entry("online", gamma, float(loglik[0] / loglik[1]), changed, beta, hard)
        entry.update(e.check_classes(state))
        state.online_step += 1
        if state.online_step == n_online:
            state.running = None  # not needed any more: keeps the checkpoints small
        e.finish_iteration(state, entry, checkpoint)

    # Full-batch EM until fewer than convergence_percent of the particles change class (once β
    # has reached 0 or force-hard is on, a first_n hard phase is over and the resolution has
    # reached its target), or max_iterations.
    while not state.finished and state.full_pass < settings.max_iterations:
        volumes = prepare_volumes(e.estep_maps(state), settings.pad)
        stats = e.zeros()
        loglik = torch.zeros(2, dtype=torch.float64, device=e.device)  # sum, count
        log_prior = torch.log(state.prior.clamp_min(1e-30))
        if e.group.size > 1:  # each rank fills its rows; the sum over ranks fills them all
            state.posteriors[:] = 0
            state.posteriors_estep[:] = 0
        for batch in e.batches(np.arange(e.n), f"iteration {e.iteration}"):
            result, scores = e.score_batch(batch, volumes, state.noise, state.prior)
            gamma, _, _ = e.layers(scores, batch.rows, state.splits)
            e.accumulate(stats, batch, result, gamma.detach(), state.noise)
            state.posteriors[batch.rows] = gamma.detach().cpu().numpy()
            state.posteriors_estep[batch.rows] = (
                torch.exp(log_posterior(result.loglik, log_prior)).cpu().numpy()
            )
            loglik[0] += torch.logsumexp(scores, 1).double().sum()
            loglik[1] += len(batch.rows)
        e.group.sum_(*stats.tensors(), loglik)
        e.group.sum_array_(state.posteriors)
        e.group.sum_array_(state.posteriors_estep)
        beta, hard = e.beta_and_hard()
        state.consensus = e.consensus_from(stats, state.noise)
        state.maps, state.prior, state.noise = e.m_step(stats, state.noise)
        changed = e.switched(np.arange(e.n), state.posteriors.argmax(1))
        gamma = torch.as_tensor(state.posteriors)
        entry = e.entry("full", gamma, float(loglik[0] / loglik[1]), changed, beta, hard)
        entry.update(e.check_classes(state))
        state.full_pass += 1
        beta_done = hard or beta == 0.0  # with force-hard on, β has no effect
        # ... and not before the E-step has reached the target resolution: particles that
        # stop changing class at 8 Å may well change at 5 Å (the hard set of "Measured").
        schedules_done = (
            beta_done
            and e.resolution.reached(e.iteration, e.d, e.pixel_size)
            and not (settings.hard.mode == "first_n" and hard)
        )
        converged = (
            state.full_pass >= 2
            and schedules_done
            and changed < settings.convergence_percent
            and not state.splits
        )
        state.finished = converged or state.full_pass == settings.max_iterations
        e.finish_iteration(state, entry, checkpoint)
    return _result(e, state)


def _result(e: _Engine, state: _RunState) -> ClassificationResult:
    hard_maps = None
    if state.full_pass > 0:
        best = state.posteriors.argmax(1)
        hard_maps, _, _ = e.m_step(e.assignment_statistics(best, state.noise), state.noise)
    return ClassificationResult(
        state.maps,
        e.pixel_size,
        state.prior,
        state.posteriors,
        state.posteriors_estep,
        e.history,
        hard_maps,
    )


def _gradient_epochs(e: _Engine, state: _RunState, checkpoint) -> None:
    """Gradient training (see :mod:`cryotorch.engine.gradient`): per epoch, mini-batches of
    ``gradient.batch_size`` particles in a new random order, one optimiser step each; after
    the epoch the regulariser's filter, the noise (from the residuals, as in EM) and the table
    row. Under torch.distributed each rank scores its share and the gradients are summed."""
    g = e.s.gradient
    if e.regulariser.half_sets:
        raise ValueError("gradient training makes no half-set reconstructions for the regulariser")
    noise_power = state.noise.power if g.train_noise else None
    model = ClassMaps(state.maps, state.prior, e.mask, g.train_prior, noise_power)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(g.optimizer, trained, g.learning_rate)
    if state.gradient is not None:
        model.load_state_dict(state.gradient["model"])
        optimizer.load_state_dict(state.gradient["optimizer"])
    while not state.finished and state.full_pass < g.epochs:
        order = e.rng.permutation(e.n)
        noise_sums = torch.zeros(e.n_groups, e.d // 2 + 1, dtype=torch.float64, device=e.device)
        noise_counts = torch.zeros_like(noise_sums)
        class_weight = torch.zeros(e.k, dtype=torch.float64, device=e.device)
        loglik = torch.zeros(2, dtype=torch.float64, device=e.device)  # sum, count
        if e.group.size > 1:
            state.posteriors[:] = 0
            state.posteriors_estep[:] = 0
        for start in range(0, e.n, g.batch_size):
            rows = order[start : start + g.batch_size]
            optimizer.zero_grad()
            maps = model.maps()
            volumes = prepare_volumes(e.estep_maps(state, maps), e.s.pad)
            log_prior = model.log_prior()
            # The prior's share of this step (once over the ranks): penalty / N per particle.
            loss = e.regulariser.penalty(maps) / e.n if e.group.is_main else 0.0
            noise = NoiseModel(model.noise_power()) if g.train_noise else state.noise
            for batch in e.batches(rows):
                max_shell = e.resolution.max_shell(e.iteration, e.d, e.pixel_size)
                result = e.estep(volumes, batch, noise, max_shell)
                scores = result.loglik + log_prior
                gamma, _, _ = e.layers(scores, batch.rows, state.splits)
                objective = free_energy(scores, gamma)
                if g.train_noise:
                    counts = noise.pixels_per_shell()
                    objective = objective + gaussian_normaliser(
                        noise.power, counts, batch.optics_group, max_shell
                    )
                loss = loss - objective.sum() / len(rows)
                gamma = gamma.detach()
                state.posteriors[batch.rows] = gamma.cpu().numpy()
                state.posteriors_estep[batch.rows] = (
                    torch.exp(log_posterior(result.loglik.detach(), log_prior.detach()))
                    .cpu()
                    .numpy()
                )
                residual = (gamma[:, :, None] * result.residual_shells.detach()).sum(1)
                sums, counts = state.noise.sums_by_group(residual, batch.optics_group)
                noise_sums += sums
                noise_counts += counts
                class_weight += gamma.sum(0).double()
                loglik[0] += torch.logsumexp(scores.detach(), 1).double().sum()
                loglik[1] += len(batch.rows)
            if torch.is_tensor(loss) and loss.requires_grad:
                loss.backward()
            grads = [p.grad for p in trained if p.grad is not None]
            e.group.sum_(*grads)
            if not all(bool(torch.isfinite(grad).all()) for grad in grads):
                raise FloatingPointError(
                    f"gradient training: a non-finite gradient in epoch {state.full_pass} "
                    "(try a smaller optim.gradient.learning_rate)"
                )
            optimizer.step()
        e.group.sum_(noise_sums, noise_counts, class_weight, loglik)
        e.group.sum_array_(state.posteriors)
        e.group.sum_array_(state.posteriors_estep)
        model.set_maps(e.regulariser.filter_maps(model.maps().detach(), e.mask))
        if not g.train_prior:
            with torch.no_grad():
                model.logits.copy_(torch.log((class_weight / class_weight.sum()).to(e.dtype)))
        state.maps = model.maps().detach()
        state.prior = torch.exp(model.log_prior()).detach()
        if g.train_noise:
            state.noise = NoiseModel(model.noise_power().detach())
        else:
            state.noise = NoiseModel.from_power_sums(noise_sums, noise_counts, e.dtype)
        beta, hard = e.beta_and_hard()
        changed = e.switched(np.arange(e.n), state.posteriors.argmax(1))
        gamma_all = torch.as_tensor(state.posteriors)
        entry = e.entry("gradient", gamma_all, float(loglik[0] / loglik[1]), changed, beta, hard)
        entry.update(e.check_classes(state))
        state.full_pass += 1
        state.finished = state.full_pass == g.epochs
        state.gradient = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        e.finish_iteration(state, entry, checkpoint)
