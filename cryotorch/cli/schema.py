"""The schemas of ``cryotorch-classify``'s configuration (``configs/classify.yaml`` and its
groups) and of ``cryotorch-simulate``'s (``configs/simulate.yaml``), as dataclasses: the
composed configuration is merged into :class:`RunConfig` (:class:`SimulateConfig`), which
checks every value's type and names its key, then made into objects, whose ``__post_init__``
checks ranges and choices. The engine's groups are
:class:`~cryotorch.engine.settings.ClassificationSettings`'; ``data``, ``logger`` and the
top-level keys are the command's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cryotorch.engine.settings import (
    ClassificationSettings,
    MaskSettings,
    ModelSettings,
    OptimSettings,
    PosteriorSettings,
)
from cryotorch.errors import InputError
from cryotorch.physics.slices import KERNEL_CHOICES
from cryotorch.simulate.particles import SimulationSettings

__all__ = [
    "CustomConfig",
    "DataConfig",
    "LoggerConfig",
    "OutputsConfig",
    "RunConfig",
    "SimulateConfig",
    "read_run_config",
    "read_simulate_config",
]

Config = TypeVar("Config")


@dataclass
class DemoConfig:
    """``data.simulate.*``: the built-in data set (``configs/simulate.yaml`` for the rest)."""

    n_particles: int = 2000
    snr: float = 0.05
    box: int = 64
    pixel_size: float = 1.5
    proportions: list[float] | None = None


@dataclass
class DataConfig:
    """``data.*`` (``configs/data/default.yaml``): the files a run reads."""

    particles: str | None = None  # None: simulate the built-in data set
    initial_maps: Any = None  # one path, or a list of one per class
    reference: str | None = None
    data_dir: str | None = None
    passthrough: str | None = None
    pixel_size: float | None = None
    ignore_stack_pixel_size: bool = False
    cache_gb: float = 1.0
    simulate: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.cache_gb <= 1e6:
            raise ValueError(f"data.cache_gb must be in [0, 1e6] (GB), got {self.cache_gb}")
        for key in ("particles", "reference", "data_dir", "passthrough"):
            if getattr(self, key) == "":
                raise ValueError(f"data.{key} is empty: give a path, or null")
        # The readers' range: a RELION 3.0 file's pixel size outside it was refused as the
        # file's own rlnImagePixelSize, which the file does not have.
        if self.pixel_size is not None and not 0 < self.pixel_size <= 100:
            raise ValueError(f"data.pixel_size must be in (0, 100] Å, got {self.pixel_size}")

    def initial_map_paths(self) -> list[str] | None:
        """``initial_maps`` as a list of paths (None: none given)."""
        if self.initial_maps is None:
            return None
        if isinstance(self.initial_maps, str):
            return [self.initial_maps]
        return [str(path) for path in self.initial_maps]


@dataclass
class LoggerConfig:
    """``logger.*`` (``configs/logger/``)."""

    tensorboard: bool = True
    quiet: bool = False
    report_every: int = 5  # iterations between refreshes of output_dir/report; 0: none

    def __post_init__(self) -> None:
        if not self.report_every >= 0:
            raise ValueError(f"logger.report_every must be >= 0, got {self.report_every}")


@dataclass
class OutputsConfig:
    """``outputs.*``: what a run writes beyond its maps, particle file and posteriors."""

    class_files: bool = True  # particles_class001.star, ...: each class's particles
    class_min_probability: float = 0.0  # of the E-step's posterior, for the class files
    iteration_maps: bool = False  # iterations/it007_class001.mrc, ...: every iteration's maps

    def __post_init__(self) -> None:
        if not 0 <= self.class_min_probability < 1:
            raise ValueError(
                f"outputs.class_min_probability must be in [0, 1), got {self.class_min_probability}"
            )


@dataclass
class CustomConfig:
    """``custom.*``: a user's own modules, made by Hydra's ``instantiate``
    (:mod:`cryotorch.cli.custom`): ``{_target_: module.Class, ...arguments}`` or None."""

    regulariser: Any = None  # a cryotorch.Regulariser, in place of model.regulariser's
    similarity_layer: Any = None  # nn.Module (scores (b, K), beta) -> (b, K), for class similarity


@dataclass
class RunConfig:
    """The whole configuration of ``cryotorch-classify``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    posterior: PosteriorSettings = field(default_factory=PosteriorSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    custom: CustomConfig = field(default_factory=CustomConfig)
    output_dir: str = "classify"
    resume: bool = False
    continue_from: str | None = None  # a run's folder (or checkpoint.pt) to continue
    seed: int = 0
    device: str = "cpu"
    kernels: str = "numba"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(
                f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {self.kernels!r}"
            )

    def settings(self) -> ClassificationSettings:
        """The engine's settings of this run."""
        return ClassificationSettings(
            model=self.model,
            posterior=self.posterior,
            optim=self.optim,
            mask=self.mask,
            seed=self.seed,
            progress=not self.logger.quiet,
        )


def read_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """``cfg`` (as Hydra composed it, or a checkpoint's plain dict of settings) checked
    against the schema; an :class:`InputError` naming the key for a value of the wrong type,
    an unknown key or a value out of range."""
    _refuse_non_paths(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg)
    config = _read_config(cfg, RunConfig)
    try:
        config.settings()  # the checks across groups
    except ValueError as exc:
        raise InputError("configuration", None, str(exc)) from exc
    return config


# Keys whose values are paths: Hydra reads an unquoted 1e999 or true as a number or a bool,
# which the schema would turn into a file named 'inf' or 'True'.
PATH_KEYS = ("data.particles", "data.reference", "data.data_dir", "data.passthrough",
             "data.initial_maps", "mask.solvent", "mask.focus", "continue_from")  # fmt: skip


def _refuse_non_paths(cfg: DictConfig) -> None:
    """An :class:`InputError` naming a path key given a number or a bool."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        values = list(value) if isinstance(value, ListConfig) else [value]
        for item in values:
            if isinstance(item, bool | int | float):
                raise InputError(
                    "configuration",
                    key,
                    f"expected a path, got the {type(item).__name__} {item!r} (a file named "
                    f"so: quote it, {key}='{item}')",
                )


@dataclass(frozen=True)
class SimulateConfig(SimulationSettings):
    """The whole configuration of ``cryotorch-simulate`` (``configs/simulate.yaml``): the
    simulation's own settings, and the maps to simulate from."""

    maps: list[str] | None = None  # None: the built-in pair
    output_dir: str = "simulated"
    box: int = 64  # atomic models only: pixels
    pixel_size: float = 1.5  # Å
    bfactor: float = 50.0  # Å²
    superpose: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.box >= 8:
            raise ValueError(f"box must be >= 8 pixels, got {self.box}")
        if not 0 < self.pixel_size <= 100:
            raise ValueError(f"pixel_size must be in (0, 100] Å, got {self.pixel_size}")
        if not 0 <= self.bfactor <= 1000:
            raise ValueError(f"bfactor must be in [0, 1000] Å², got {self.bfactor}")

    def settings(self) -> SimulationSettings:
        """The simulation's settings alone."""
        return SimulationSettings(
            **{f.name: getattr(self, f.name) for f in fields(SimulationSettings)}
        )


def read_simulate_config(cfg: DictConfig) -> SimulateConfig:
    """``cfg`` checked against :class:`SimulateConfig`, as :func:`read_run_config` does."""
    return _read_config(cfg, SimulateConfig)


def _read_config(cfg: DictConfig | dict[str, Any], schema: type[Config]) -> Config:
    """``cfg`` merged into the dataclass ``schema`` and made into one; an :class:`InputError`
    naming the key for a wrong type or an unknown key, or giving ``__post_init__``'s message
    for a value out of range."""
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or None
        raise InputError("configuration", key, str(exc).splitlines()[0]) from exc
    except ValueError as exc:
        raise InputError("configuration", None, str(exc)) from exc
    assert isinstance(config, schema)  # what a structured dataclass converts to
    return config
