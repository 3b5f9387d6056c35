"""What a classification is asked to do: :class:`ClassificationSettings`, nested by config
group as ``configs/`` is (``model``, ``posterior``, ``optim``, ``mask``), and the
:class:`Masks` given to it.

The dataclasses are the schema of the configs: the command line's values are merged into them
(:func:`cryotorch.cli.schema.read_run_config`, which checks each value's type and names
the key) and every check of a value's range or choice is here, in ``__post_init__``, once.
Their defaults are the YAML files' (a test holds the two to each other); lengths are in Å.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from cryotorch.engine.gradient import GradientSettings
from cryotorch.engine.regularisers import REGULARISERS
from cryotorch.engine.schedules import HardSchedule, SimilaritySchedule
from cryotorch.physics.symmetry import SYMMETRY_FORMS, canonical_symmetry

__all__ = [
    "ClassificationSettings",
    "MaskSettings",
    "Masks",
    "ModelSettings",
    "OptimSettings",
    "PosteriorSettings",
    "SimilaritySettings",
    "settings_dict",
]


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _positive(key: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is not None and not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _within(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Refuse ``value`` outside [``low``, ``high``] (``(low, high]`` if ``low_open``), NaN too."""
    inside = (value > low if low_open else value >= low) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        low_text, high_text = (f"{x}" if isinstance(x, int) else f"{x:g}" for x in (low, high))
        raise ValueError(f"{key} must be in {bracket}{low_text}, {high_text}], got {value}")


@dataclass
class ModelSettings:
    """``model.*`` (``configs/model/default.yaml``)."""

    num_classes: int = 2
    init: str = "random"  # random (RELION: random assignment) | pca (cryoSPARC)
    pca_subsets: int = 20  # random subsets reconstructed for the PCA start
    target_resolution: float = 5.0
    initial_resolution: float = 20.0  # initial maps low-passed to this; E-step starts here
    resolution_reach_at: int = 20
    particle_diameter: float | None = None  # solvent mask; None: 0.9 of the box
    regulariser: str = "tau2"  # tau2 (RELION's T·τ²) | fsc (cryoSPARC's FSC) | denoise
    tau2_fudge: float = 4.0
    contrast: str = "from_input"  # per-particle scale: none | from_input | optimal
    pad: int = 2
    symmetry: str = "C1"  # point group of the class maps, RELION's --sym names (C1: none)
    empty_class_fraction: float = 0.01  # a class with a smaller share is reported empty
    duplicate_correlation: float = 0.99  # two maps more alike than this are reported alike
    reseed: int = 0  # how many times an empty/duplicate class may be re-seeded (0: report only)

    def __post_init__(self) -> None:
        _positive("model.num_classes", self.num_classes)
        _choice("model.init", self.init, ("random", "pca"))
        _positive("model.pca_subsets", self.pca_subsets)
        # Å, finite: an initial resolution of inf made the schedule's shells NaN, 1e308 a map
        # label of 310 digits (a traceback either way); no box reaches 10,000 Å.
        _within("model.target_resolution", self.target_resolution, 0, 1e4, low_open=True)
        _within("model.initial_resolution", self.initial_resolution, 0, 1e4, low_open=True)
        _positive("model.resolution_reach_at", self.resolution_reach_at, allow_zero=True)
        _positive("model.particle_diameter", self.particle_diameter)
        _choice("model.regulariser", self.regulariser, REGULARISERS)
        _within("model.tau2_fudge", self.tau2_fudge, 1e-3, 1e3)  # T τ² underflows below
        _choice("model.contrast", self.contrast, ("none", "from_input", "optimal"))
        _positive("model.pad", self.pad)
        try:
            canonical_symmetry(self.symmetry)
        except ValueError:
            raise ValueError(
                f"model.symmetry must be {SYMMETRY_FORMS}, got {self.symmetry!r}"
            ) from None
        _positive("model.reseed", self.reseed, allow_zero=True)


@dataclass
class SimilaritySettings:
    """``posterior.similarity.*``: class similarity β and its schedule."""

    start: float = 0.5
    anneal_start: int = 0
    anneal_end: int = 10
    form: str = "temperature"  # temperature | mixing (see ClassSimilarity)
    auto_tune: bool = False  # True: ``start`` is tuned on the first batch (see tune_similarity)
    target_ess_fraction: float = 0.75  # the mean class ESS, as a fraction of K, it tunes to

    def __post_init__(self) -> None:
        _choice("posterior.similarity.form", self.form, ("temperature", "mixing"))
        self.schedule()  # checks start and the annealing iterations

    def schedule(self, start: float | None = None) -> SimilaritySchedule:
        """β's schedule, from ``start`` instead of this ``start`` if given (auto-tuned)."""
        return SimilaritySchedule(
            self.start if start is None else start,
            self.anneal_start,
            self.anneal_end,
            self.auto_tune,
            self.target_ess_fraction,
        )


@dataclass
class PosteriorSettings:
    """``posterior.*`` (``configs/posterior/default.yaml``): class similarity, force hard."""

    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    hard: str = "never"  # never | always | after_anneal | first_n
    hard_iterations: int = 5  # N for first_n

    def __post_init__(self) -> None:
        self.hard_schedule()  # checks the mode

    def hard_schedule(self) -> HardSchedule:
        return HardSchedule(self.hard, self.hard_iterations)  # type: ignore[arg-type]


@dataclass
class OptimSettings:
    """``optim.*`` (``configs/optim/default.yaml``, ``gradient.yaml``)."""

    method: str = "em"  # em | gradient
    online_epochs: float = 2.0
    batch_per_class: int = 1000
    learning_rate: float = 0.4
    half_life_percent: float = 50.0
    max_iterations: int = 25
    convergence_percent: float = 2.0
    batch_size: int = 512  # particles per E-step call in full passes
    prefetch: bool | None = None  # read the next batch in a thread; None: on CUDA only
    gradient: GradientSettings = field(default_factory=GradientSettings)

    def __post_init__(self) -> None:
        _choice("optim.method", self.method, ("em", "gradient"))
        _within("optim.online_epochs", self.online_epochs, 0, 1000)
        _positive("optim.batch_per_class", self.batch_per_class)
        _within("optim.learning_rate", self.learning_rate, 0, 1, low_open=True)
        _within("optim.half_life_percent", self.half_life_percent, 0, 100, low_open=True)
        _within("optim.convergence_percent", self.convergence_percent, 0, 100)
        _positive("optim.max_iterations", self.max_iterations)
        _positive("optim.batch_size", self.batch_size)


@dataclass
class MaskSettings:
    """``mask.*`` (``configs/mask/default.yaml``): the solvent and focus masks (their files
    are read by :mod:`cryotorch.inputs`; the engine uses the sphere's soft edge)."""

    solvent: str = "sphere"  # sphere | auto | from_reference | a .mrc file
    threshold: float = 0.2
    lowpass_angstrom: float = 15.0
    extend_angstrom: float = 6.0
    soft_edge_angstrom: float = 8.0  # the spherical solvent mask falls to 0 over this width
    focus: str | None = None  # a .mrc focus mask

    def __post_init__(self) -> None:
        _positive("mask.soft_edge_angstrom", self.soft_edge_angstrom, allow_zero=True)


@dataclass
class ClassificationSettings:
    """How to classify: one field per config group, the run's ``seed``, and ``progress`` (a
    progress bar over each full pass; from ``logger.quiet``)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    posterior: PosteriorSettings = field(default_factory=PosteriorSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _within("seed", self.seed, 0, 2**63 - 1)  # numpy's and torch's generators take these
        if self.optim.method == "gradient" and self.model.regulariser == "fsc":
            raise ValueError(
                "model.regulariser=fsc filters with half-set reconstructions, which gradient "
                "training does not make: use tau2 or denoise with optim=gradient"
            )
        if self.optim.method == "gradient" and canonical_symmetry(self.model.symmetry) != "C1":
            raise ValueError(
                "model.symmetry is imposed in the EM M-step, which gradient training does not "
                "have: use model.symmetry=C1 with optim=gradient"
            )


@dataclass
class Masks:
    """Masks at the working box, each ``(d, d, d)`` in [0, 1].

    ``solvent`` S multiplies every map after each M-step (None: with ``mask.solvent=auto``
    made at the start from the reconstruction of all particles, see
    :func:`~cryotorch.engine.consensus.solvent_mask_from_data`; otherwise a sphere of
    ``particle_diameter`` whose raised-cosine edge falls to 0 over ``mask.soft_edge_angstrom``).
    ``focus`` F restricts what the E-step compares: it scores each particle against
    ``S · (F · V_k + (1 - F) · V̄)``, so outside F every class looks alike
    and only the region inside F decides the class. V̄ is ``consensus`` (any greyscale: fitted
    to the particles) or, if None, the reconstruction of all particles at each M-step.
    """

    solvent: torch.Tensor | None = None
    focus: torch.Tensor | None = None
    consensus: torch.Tensor | None = None


def settings_dict(settings: ClassificationSettings) -> dict:
    """The settings that decide a run's result, as nested plain values (``progress`` and
    ``optim.prefetch`` left out)."""
    values = asdict(settings)
    values.pop("progress")
    values["optim"].pop("prefetch")
    return values
