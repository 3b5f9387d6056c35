"""Built-in example data sets with known classes, for tests, scripts and notebooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryotorch.io import write_map
from cryotorch.physics.masks import soft_sphere
from cryotorch.simulate.atomic import atomic_model_to_map, builtin_structures
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

__all__ = ["ligand_site", "small_ligand_set"]


def ligand_site(protein: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Where a "ligand" binds a map ``protein (d, d, d)`` (``[z, y, x]``, ``pixel_size`` Å):
    2 Å past where its density (above 20 % of its maximum) ends along +x through the box
    centre. Returns a Gaussian blob there (σ 2 Å, peak 1, ``(d, d, d)``) and its centre
    ``(3,)`` (x, y, z in Å from the box centre)."""
    box = protein.shape[-1]
    c = (np.arange(box) - box // 2) * pixel_size
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    profile = protein[box // 2, box // 2, box // 2 :]
    edge_px = int(np.nonzero(profile > 0.2 * profile.max())[0].max())
    centre = np.array([edge_px * pixel_size + 2.0, 0.0, 0.0])
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return np.exp(-r2 / (2 * 2.0**2)), centre


def small_ligand_set(
    work: Path, n: int, snr: float, ligand: float, box: int, pixel_size: float, seed: int
) -> tuple[Path, Path, Path]:
    """Adenylate kinase (open) without and with a "ligand" (a Gaussian blob, σ 2 Å, whose mass
    is ``ligand`` times the protein's, on the protein's surface along +x), half the particles
    each, simulated into ``work/data``; also the consensus map (the two maps' average, what a
    consensus refinement of the mixture gives) and a focus mask (soft sphere of radius 8 Å,
    4 Å edge, about the ligand). Returns (particles.star, consensus.mrc, focus.mrc)."""
    protein = atomic_model_to_map(builtin_structures()[0], box, pixel_size, 50.0)
    blob, centre = ligand_site(protein, pixel_size)
    blob *= ligand * protein.sum() / blob.sum()
    maps = np.stack([protein, protein + blob]).astype(np.float32)
    star = simulate_particles(
        maps, pixel_size, work / "data", SimulationSettings(n_particles=n, snr=snr, seed=seed)
    )
    write_map(work / "consensus.mrc", maps.mean(0), pixel_size)
    sphere = soft_sphere(box, 8.0 / pixel_size, 4.0 / pixel_size).numpy()
    offset = np.round(centre / pixel_size).astype(int)  # voxels, x y z
    focus = np.roll(sphere, shift=(offset[2], offset[1], offset[0]), axis=(0, 1, 2))
    write_map(work / "focus.mrc", focus.astype(np.float32), pixel_size)
    return star, work / "consensus.mrc", work / "focus.mrc"
