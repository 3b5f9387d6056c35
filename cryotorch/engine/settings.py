"""What a classification is asked to do: :class:`ClassificationSettings` (the values of
``configs/``, checked when made) and the :class:`Masks` given to it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from cryotorch.engine.gradient import GradientSettings
from cryotorch.engine.schedules import HardSchedule, SimilaritySchedule

__all__ = ["ClassificationSettings", "Masks", "settings_dict"]


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
