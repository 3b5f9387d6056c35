"""What a classification run writes, each file atomically.

``class_001.mrc``, ... (posterior-weighted maps at the working box and pixel size);
``class_001_hard.mrc``, ... (each class from the particles assigned to it only);
``particles.star`` (every input column, plus ``rlnClassNumber`` 1-based,
``rlnMaxValueProbDistribution`` and ``rlnCryotorchClassESS``); ``particles.cs`` too when the
input was a ``.cs`` (``alignments3D/class`` 0-based, ``alignments3D/class_ess``,
``alignments_class3D_{k}/class_posterior``); ``posteriors.npy`` ``(n, K)`` float32 (after the
class-similarity and force-hard layers, as the last M-step used them) and
``posteriors_estep.npy`` (the E-step's own); ``iterations.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryotorch.engine.posterior import effective_sample_size
from cryotorch.engine.state import ClassificationResult
from cryotorch.io import write_map, write_particles
from cryotorch.io.atomic import atomic_path
from cryotorch.monitor import RunMonitor
from cryotorch.particles import ParticleTable

__all__ = ["write_outputs"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array.astype(np.float32))


def write_outputs(
    output_dir: Path, table: ParticleTable, result: ClassificationResult, monitor: RunMonitor
) -> None:
    output_dir = Path(output_dir)
    posteriors = result.posteriors
    ess = effective_sample_size(posteriors.astype(np.float64))
    best = posteriors.argmax(axis=1)
    for k, volume in enumerate(result.maps.detach().cpu().numpy()):
        write_map(output_dir / f"class_{k + 1:03d}.mrc", volume, result.pixel_size)
    if result.hard_maps is not None:
        for k, volume in enumerate(result.hard_maps.detach().cpu().numpy()):
            write_map(output_dir / f"class_{k + 1:03d}_hard.mrc", volume, result.pixel_size)
    write_particles(
        table,
        output_dir / "particles.star",
        {
            "rlnClassNumber": best + 1,
            "rlnMaxValueProbDistribution": posteriors.max(axis=1),
            "rlnCryotorchClassESS": ess,
        },
    )
    if table.source is not None and table.source.format == "cs":
        fields = {
            "alignments3D/class": best.astype(np.uint32),
            "alignments3D/class_ess": ess.astype(np.float32),
        }
        for k in range(posteriors.shape[1]):
            fields[f"alignments_class3D_{k}/class_posterior"] = posteriors[:, k].astype(np.float32)
        write_particles(table, output_dir / "particles.cs", fields)
    _save_npy(output_dir / "posteriors.npy", posteriors)
    _save_npy(output_dir / "posteriors_estep.npy", result.posteriors_estep)
    monitor.write_csv(output_dir / "iterations.csv")
