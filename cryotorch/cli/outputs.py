"""What a classification run writes, each file atomically.

``class_001.mrc``, ... (posterior-weighted maps at the particles' box and pixel size, their
first optics group's where groups differ (the run's
:func:`~cryotorch.particles.reference_frame`): the working-box maps Fourier-padded, so no
detail beyond the resolution the run used, which the header's second label states);
``class_001_hard.mrc``, ... (each class from the particles assigned to it only, the same way);
``solvent_mask.mrc`` (the run's solvent mask, the same way, clipped to [0, 1]);
``particles.star`` (every input column, plus ``rlnClassNumber`` 1-based,
``rlnMaxValueProbDistribution``, ``rlnCryotorchClassESS`` (after the layers) and
``rlnCryotorchEStepESS`` (of the E-step's posterior)); ``particles.cs`` too when the input
was a ``.cs`` (``alignments3D/class`` 0-based, ``alignments3D/class_ess``,
``alignments3D/class_ess_estep``,
``alignments_class3D_{k}/class_posterior``); ``posteriors.npy`` ``(n, K)`` float32 (after the
class-similarity and force-hard layers, as the last M-step used them) and
``posteriors_estep.npy`` (the E-step's own); ``iterations.csv``; ``model.star`` (the last
iteration's class table, RELION's layout: :func:`write_model_star`); and, unless
``outputs.class_files`` is false, ``particles_class001.star``, ... (``.cs`` too for a ``.cs``
input): each class's particles (its most probable class, and an E-step probability of it
above ``outputs.class_min_probability``) with the same columns, ready for the next job; a
class left with no particle has no file.

During the run, each iteration writes ``iterations/it007_model.star`` (and its class maps
``iterations/it007_class001.mrc``, ... with ``outputs.iteration_maps``), before its
checkpoint, so that a resumed run rewrites them as they were.

The set is complete or absent: the files are written into a hidden folder in ``output_dir``
(``.outputs.cryotorch-tmp``) and moved into place, a rename each, only once all are written;
result files of an earlier run in the folder that the new set does not have (``class_003.mrc``
of a run with more classes) are removed then. A failed write (a full disk) leaves the folder
as it was, and the run can be resumed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryotorch.cli.schema import OutputsConfig
from cryotorch.engine.posterior import effective_sample_size
from cryotorch.engine.state import ClassificationResult
from cryotorch.errors import OutputError
from cryotorch.io import write_map, write_particles
from cryotorch.io.atomic import TEMPORARY_MARK, atomic_path
from cryotorch.io.star_tables import write_star_blocks
from cryotorch.monitor import RunMonitor
from cryotorch.particles import ParticleTable
from cryotorch.physics.fourier import fourier_pad_3d

__all__ = ["ITERATIONS_FOLDER", "write_iteration", "write_model_star", "write_outputs"]


def _class_columns(
    table: ParticleTable, posteriors: np.ndarray, posteriors_estep: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """The columns a run adds to its particle files, by suffix: ``.star`` always, ``.cs`` too
    when the input was a ``.cs``; ``posteriors`` ``(n, k)`` after the layers, ``_estep``
    before them."""
    ess = effective_sample_size(posteriors.astype(np.float64))
    ess_estep = effective_sample_size(posteriors_estep.astype(np.float64))
    best = posteriors.argmax(axis=1)
    columns = {
        ".star": {
            "rlnClassNumber": best + 1,
            "rlnMaxValueProbDistribution": posteriors.max(axis=1),
            "rlnCryotorchClassESS": ess,
            "rlnCryotorchEStepESS": ess_estep,
        }
    }
    if table.source is not None and table.source.format == "cs":
        fields = {
            "alignments3D/class": best.astype(np.uint32),
            "alignments3D/class_ess": ess.astype(np.float32),
            "alignments3D/class_ess_estep": ess_estep.astype(np.float32),
        }
        for k in range(posteriors.shape[1]):
            fields[f"alignments_class3D_{k}/class_posterior"] = posteriors[:, k].astype(np.float32)
        columns[".cs"] = fields
    return columns


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array.astype(np.float32))


# The hidden folder the result set is written into before it is moved into place.
STAGING_NAME = f".outputs{TEMPORARY_MARK}"
# Names of the files of a result set (of this run, or of an earlier one in the same folder).
RESULT_PATTERNS = (
    "class_[0-9][0-9][0-9].mrc",
    "class_[0-9][0-9][0-9]_hard.mrc",
    "solvent_mask.mrc",
    "particles.star",
    "particles.cs",
    "particles_class[0-9][0-9][0-9].star",
    "particles_class[0-9][0-9][0-9].cs",
    "posteriors.npy",
    "posteriors_estep.npy",
    "iterations.csv",
    "model.star",
)


def write_outputs(
    output_dir: Path,
    table: ParticleTable,
    result: ClassificationResult,
    monitor: RunMonitor,
    box: int,
    outputs: OutputsConfig | None = None,
) -> None:
    """Write the run's result set into ``output_dir``, all of it or (if a write fails)
    nothing; see the module's docstring. ``box``: the particles' (their reference frame's),
    the maps' size; ``outputs``: the per-class files' settings (default: written, no
    threshold)."""
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write_result_set(staging, table, result, monitor, box, outputs or OutputsConfig())
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OutputError):  # name the file the user would have had
            raise OutputError(output_dir / Path(exc.file).name, exc.cause) from exc
        if isinstance(exc, OSError):  # making the hidden folder itself
            raise OutputError(staging, exc) from exc
        raise
    written = sorted(p.name for p in staging.iterdir())
    for pattern in RESULT_PATTERNS:
        for earlier in output_dir.glob(pattern):
            if earlier.name not in written:
                earlier.unlink()
    for name in written:
        os.replace(staging / name, output_dir / name)
    staging.rmdir()


def _write_maps(
    folder: Path,
    name: str,
    maps: torch.Tensor,
    work_pixel_size: float,
    resolution: float,
    box: int,
    kind: str,
) -> list[str]:
    """The class maps ``(k, d, d, d)`` at the working box (``work_pixel_size`` Å),
    Fourier-padded to the particles' ``box`` (their reference frame's, and so its pixel size),
    each labelled with what it is and the ``resolution`` (Å) the run used; ``name``: e.g.
    ``"class_{:03d}.mrc"``. Returns the file names."""
    d, k = maps.shape[-1], maps.shape[0]
    full = fourier_pad_3d(maps.detach().cpu().double(), box).float().numpy()
    pixel_size = work_pixel_size * d / box
    names = []
    for i, volume in enumerate(full):
        label = (
            f"class {i + 1}/{k} {kind}: to {resolution:.1f} A, box {d} at "
            f"{work_pixel_size:.3f} A padded to {box}"
        )
        names.append(name.format(i + 1))
        write_map(folder / names[-1], volume, pixel_size, labels=[label])
    return names


def _write_mask(path: Path, mask: torch.Tensor, work_pixel_size: float, box: int) -> None:
    """The run's solvent mask ``(d, d, d)``, Fourier-padded to the particles' ``box`` as the
    maps are (and clipped to [0, 1], which the padding's ringing leaves), ready to be given to
    a next job (RELION's ``--solvent_mask``, cryoSPARC's mask input, ``mask.solvent=``)."""
    d = mask.shape[-1]
    full = fourier_pad_3d(mask.detach().cpu().double()[None], box)[0].clamp(0, 1).float()
    label = f"solvent mask of the run: box {d} at {work_pixel_size:.3f} A padded to {box}"
    write_map(path, full.numpy(), work_pixel_size * d / box, labels=[label])


def write_model_star(
    path: Path,
    row: dict,
    prior: np.ndarray,
    maps: list[str] | None,
    box: int,
    work_box: int,
    work_pixel_size: float,
) -> None:
    """An iteration's (or the run's last) class table as RELION's ``model.star`` has it:
    ``data_model_general`` (sizes, the E-step's resolution, log-likelihood, and cryotorch's
    β, force hard, class changes and both mean ESS of the iteration) and
    ``data_model_classes`` (``rlnReferenceImage`` where ``maps`` were written, names relative
    to ``path``'s folder; ``rlnClassDistribution`` the class priors ``prior (k,)``; and the
    fraction of the iteration's particles in each class). ``row``: the iteration's row of
    ``iterations.csv``; ``rlnEstimatedResolution`` is the resolution the E-step used (no
    per-class FSC is computed)."""
    k = len(prior)
    general = {
        "rlnReferenceDimensionality": 3,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": box,
        "rlnCurrentResolution": row["resolution"],
        "rlnCurrentImageSize": work_box,
        "rlnPixelSize": work_pixel_size * work_box / box,
        "rlnNrClasses": k,
        "rlnLogLikelihood": row["log_likelihood"],
        "rlnCryotorchIteration": row["iteration"],
        "rlnCryotorchPhase": row["phase"],
        "rlnCryotorchBeta": row["beta"],
        "rlnCryotorchForceHard": int(bool(row["hard"])),
        "rlnCryotorchPercentChanged": -1.0
        if row["percent_changed"] is None
        else row["percent_changed"],
        "rlnCryotorchMeanClassESS": row["mean_class_ess"],
        "rlnCryotorchMeanEStepESS": row["mean_estep_ess"],
    }
    classes: dict[str, object] = {}
    if maps is not None:
        classes["rlnReferenceImage"] = maps
    classes |= {
        "rlnClassDistribution": np.asarray(prior, dtype=np.float64),
        "rlnEstimatedResolution": np.full(k, row["resolution"], dtype=np.float64),
        "rlnCryotorchClassFraction": [row[f"class_{i + 1:03d}_fraction"] for i in range(k)],
    }
    write_star_blocks({"model_general": general, "model_classes": pd.DataFrame(classes)}, path)


ITERATIONS_FOLDER = "iterations"


def write_iteration(
    output_dir: Path, state: dict, box: int, work_pixel_size: float, keep_maps: bool
) -> None:
    """This iteration's ``iterations/it007_model.star`` and, if ``keep_maps``, its class maps
    ``iterations/it007_class001.mrc``, ... at the particles' ``box``; ``state``: the run's
    checkpoint state after the iteration (:meth:`~cryotorch.engine.state.RunState.state_dict`),
    maps at the working box of ``work_pixel_size`` Å."""
    row = state["history"][-1]
    folder = Path(output_dir) / ITERATIONS_FOLDER
    folder.mkdir(exist_ok=True)
    stem = f"it{row['iteration']:03d}"
    names = None
    if keep_maps:
        names = _write_maps(
            folder, stem + "_class{:03d}.mrc", state["maps"], work_pixel_size,
            row["resolution"], box, "soft",
        )  # fmt: skip
    work_box = state["maps"].shape[-1]
    write_model_star(
        folder / f"{stem}_model.star", row, state["prior"].numpy(), names, box, work_box,
        work_pixel_size,
    )  # fmt: skip


def _write_result_set(
    output_dir: Path,
    table: ParticleTable,
    result: ClassificationResult,
    monitor: RunMonitor,
    box: int,
    outputs: OutputsConfig,
) -> None:
    posteriors, posteriors_estep = result.posteriors, result.posteriors_estep
    best = posteriors.argmax(axis=1)
    psize = result.pixel_size
    resolution = result.history[-1]["resolution"] if result.history else 2 * psize
    names = _write_maps(output_dir, "class_{:03d}.mrc", result.maps, psize, resolution, box, "soft")
    if result.hard_maps is not None:
        _write_maps(
            output_dir, "class_{:03d}_hard.mrc", result.hard_maps, psize, resolution, box, "hard"
        )
    if result.solvent_mask is not None:
        _write_mask(output_dir / "solvent_mask.mrc", result.solvent_mask, psize, box)
    if result.history:
        prior = result.class_prior.detach().cpu().double().numpy()
        work_box = result.maps.shape[-1]
        write_model_star(
            output_dir / "model.star", result.history[-1], prior, names, box, work_box, psize
        )
    columns = _class_columns(table, posteriors, posteriors_estep)
    for suffix, new_columns in columns.items():
        write_particles(table, output_dir / f"particles{suffix}", new_columns)
    if outputs.class_files:
        confident = posteriors_estep[np.arange(len(best)), best] > outputs.class_min_probability
        for k in range(posteriors.shape[1]):
            rows = np.flatnonzero((best == k) & confident)
            if not len(rows):  # an empty class: no file (nothing for a next job to read)
                continue
            for suffix, new_columns in columns.items():
                mine = {name: values[rows] for name, values in new_columns.items()}
                write_particles(
                    table.take(rows), output_dir / f"particles_class{k + 1:03d}{suffix}", mine
                )
    _save_npy(output_dir / "posteriors.npy", posteriors)
    _save_npy(output_dir / "posteriors_estep.npy", result.posteriors_estep)
    monitor.write_csv(output_dir / "iterations.csv")
