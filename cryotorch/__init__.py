"""cryotorch: 3D classification of cryo-EM particles in PyTorch.

The pieces of an EM iteration, importable from here (see the guide "Research API"):
particles (:func:`read_particles`, :class:`ParticleImages`) -> batches of Fourier-cropped images
(:class:`BatchMaker`) -> log-likelihoods ``(b, K)`` (:class:`EStep` against
:func:`prepare_volumes` of the maps) -> posterior layers (:class:`ClassSimilarity`,
:class:`StraightThroughHard`) -> sufficient statistics (:func:`accumulate_statistics`) -> maps
(:class:`MStep`, its :class:`Regulariser` a submodule; or :func:`update_maps`).
:func:`classify` runs the whole loop.
"""

from cryotorch.engine.batches import BatchMaker, ParticleBatch
from cryotorch.engine.classify import classify
from cryotorch.engine.estep import EStep, EStepResult, log_posterior
from cryotorch.engine.gradient import ClassMaps, GradientSettings, free_energy
from cryotorch.engine.mstep import MStep, SufficientStatistics, accumulate_statistics, update_maps
from cryotorch.engine.noise import NoiseModel
from cryotorch.engine.posterior import ClassSimilarity, StraightThroughHard, effective_sample_size
from cryotorch.engine.regularisers import Regulariser, make_regulariser
from cryotorch.engine.settings import (
    ClassificationSettings,
    Masks,
    MaskSettings,
    ModelSettings,
    OptimSettings,
    PosteriorSettings,
    SimilaritySettings,
)
from cryotorch.engine.state import ClassificationResult
from cryotorch.evaluation import classification_accuracy
from cryotorch.io import ParticleImages, read_map, read_particles, write_map
from cryotorch.physics.fourier import fourier_crop_3d
from cryotorch.physics.masks import soft_sphere
from cryotorch.physics.projector import prepare_volumes, project

__version__ = "0.1.0"

__all__ = [
    "BatchMaker",
    "ClassMaps",
    "ClassSimilarity",
    "ClassificationResult",
    "ClassificationSettings",
    "EStep",
    "EStepResult",
    "GradientSettings",
    "MStep",
    "MaskSettings",
    "Masks",
    "ModelSettings",
    "NoiseModel",
    "OptimSettings",
    "ParticleBatch",
    "ParticleImages",
    "PosteriorSettings",
    "Regulariser",
    "SimilaritySettings",
    "StraightThroughHard",
    "SufficientStatistics",
    "accumulate_statistics",
    "classification_accuracy",
    "classify",
    "effective_sample_size",
    "fourier_crop_3d",
    "free_energy",
    "log_posterior",
    "make_regulariser",
    "prepare_volumes",
    "project",
    "read_map",
    "read_particles",
    "soft_sphere",
    "update_maps",
    "write_map",
]
