"""The oracle: the best classification any method can make of simulated particles.

With the true maps, the true noise and the true class proportions, the posterior of class k
for particle i is the Bayes posterior of the generative model the simulator used,

    p(k | X_i) ∝ π_k exp(-½ Σ_j m_j |X_ij - CTF_ij S_ij (P_i V_k)_j|² / (d² σ²)),

(over the half spectrum at the particles' full box, every shell from 1 to Nyquist; ``σ`` the
noise's standard deviation per pixel, ``d² σ²`` its power per Fourier pixel in rfft units) and
its argmax is the Bayes-optimal assignment: no method that sees only the images does better on
average. The gap between a classification's accuracy and the oracle's is what is left to gain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.estep import EStep
from cryotorch.engine.noise import NoiseModel
from cryotorch.errors import InputError
from cryotorch.evaluation import SIMULATION_RECORD, classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_map, read_particles
from cryotorch.physics.projector import prepare_volumes

__all__ = ["OracleResult", "oracle_posteriors"]


@dataclass
class OracleResult:
    """``posteriors (n, k)`` float64 (table order), the true classes ``truth (n,)``
    (0-based) and the oracle's ``accuracy`` (fraction of ``argmax`` equal to the truth)."""

    posteriors: np.ndarray
    truth: np.ndarray
    accuracy: float

    def gap(self, accuracy: float) -> float:
        """How far ``accuracy`` (a fraction) is below the oracle's, in percentage points."""
        return 100 * (self.accuracy - accuracy)


def oracle_posteriors(
    particles: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    max_resolution: float | None = None,
) -> OracleResult:
    """The oracle of the particles ``cryotorch-simulate`` (or
    :func:`~cryotorch.simulate.particles.simulate_particles`) wrote: ``particles`` is their
    ``particles.star``, beside which lie the true maps, ``true_classes.txt`` and
    ``simulation.json``. The E-step runs in float64 at the full box, on every shell, or with
    ``max_resolution`` (Å) on the shells to that resolution only (what a limit alone costs)."""
    star = Path(particles)
    folder = star.parent
    record_path = folder / SIMULATION_RECORD
    if not record_path.is_file():
        raise InputError(record_path, None, "not found: the oracle needs simulated particles")
    record = json.loads(record_path.read_text())
    device = torch.device(device)
    maps = torch.stack(
        [torch.from_numpy(read_map(folder / name)[0]).double() for name in record["maps"]]
    )
    k, d = maps.shape[0], maps.shape[-1]
    log_prior = torch.log(torch.as_tensor(record["proportions"], dtype=torch.float64))
    volumes = prepare_volumes(maps, int(record["pad"])).to(device)
    with ParticleImages(read_particles(star)) as images:
        batcher = BatchMaker(
            images, d, device, dtype=torch.float64, pad=int(record["pad"]), use_ctf_scale=True
        )
        n_groups = len(batcher.table.optics)
        # Noise-free particles (σ = 0): a floor far below the signal, so that the posterior
        # is one-hot rather than 0/0.
        variance = max(record["noise_sigma"] ** 2, 1e-12 * record["signal_variance"])
        power = torch.full((n_groups, d // 2 + 1), d * d * variance, dtype=torch.float64)
        noise = NoiseModel(power.to(device))
        estep = EStep()
        max_shell = d // 2
        if max_resolution is not None:
            pixel_size = float(record["pixel_size_angstrom"])
            max_shell = min(d // 2, int(d * pixel_size / max_resolution))
        posteriors = np.empty((len(batcher.table), k))
        for start in range(0, len(batcher.table), batch_size):
            rows = np.arange(start, min(start + batch_size, len(batcher.table)))
            result = estep(volumes, batcher(rows), noise, max_shell=max_shell)
            scores = result.loglik.double() + log_prior.to(device)
            posteriors[rows] = torch.softmax(scores, dim=1).cpu().numpy()
    truth = read_true_classes(folder)
    accuracy = classification_accuracy(posteriors.argmax(1), truth, k)
    return OracleResult(posteriors, truth, accuracy)
