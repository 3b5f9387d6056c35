"""Families of hard simulated data with known classes, to measure classification against the
oracle (:mod:`cryotorch.oracle`): small conformational changes, a small ligand at partial
occupancy, very low SNR, many nearby states, unbalanced classes, more classes asked for than
are present. Every set is made from the built-in adenylate kinase models (open 4AKE and closed
1AKE, 6.9 Å CA-RMSD apart once superposed): a state ``t`` of the way from open to closed is
their linear interpolation (CA-RMSD about ``6.9 t`` Å from open), every map centred on the
open model's centroid so that the maps differ only where the protein moves.

    from cryotorch.simulate.families import FAMILIES, simulate_family
    star = simulate_family(FAMILIES["ligand_3pct"], Path("work/ligand"), seed=1)

The same family and seed give bit-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryotorch.io import write_map
from cryotorch.simulate.atomic import (
    _kabsch,
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
    write_interpolated_model,
)
from cryotorch.simulate.examples import ligand_site
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

__all__ = ["FAMILIES", "Family", "ca_rmsd", "family_maps", "simulate_family"]

BOX = 64
PIXEL_SIZE = 1.5  # Å: a 96 Å box for a protein about 56 Å across
BFACTOR = 50.0  # Å²
PARTICLE_DIAMETER = 70.0  # Å: what a user would give for adenylate kinase
OPEN_CLOSED_CA_RMSD = 6.909  # Å, ca_rmsd(0, 1) of the built-in models (a test checks it)


@dataclass(frozen=True)
class Family:
    """One kind of hard data. ``states``: per true class, how far from open to closed (0 = open,
    1 = closed); ``ligand``: per true class, the mass of a bound "ligand" (a Gaussian blob,
    σ 2 Å, on the protein's surface) as a fraction of the protein's; ``proportions``: the true
    classes' shares (None: equal); ``num_classes``: K asked of a classifier (None: the true
    number)."""

    name: str
    description: str
    states: tuple[float, ...]
    snr: float
    n_particles: int
    ligand: tuple[float, ...] | None = None
    proportions: tuple[float, ...] | None = None
    num_classes: int | None = None

    @property
    def true_classes(self) -> int:
        return len(self.states)

    @property
    def classes_asked(self) -> int:
        return self.num_classes or self.true_classes


def _rmsd_fraction(angstrom: float) -> float:
    """The interpolation fraction whose state lies ``angstrom`` CA-RMSD from open."""
    return angstrom / OPEN_CLOSED_CA_RMSD


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("easy", "open vs closed (6.9 Å CA-RMSD), SNR 0.05", (0.0, 1.0), 0.05, 4000),
        Family(
            "conformation_1.5A",
            "open vs a state 1.5 Å CA-RMSD away, SNR 0.05",
            (0.0, _rmsd_fraction(1.5)),
            0.05,
            4000,
        ),
        Family(
            "conformation_2.6A",
            "open vs a state 2.6 Å CA-RMSD away, SNR 0.01",
            (0.0, _rmsd_fraction(2.6)),
            0.01,
            4000,
        ),
        Family(
            "ligand_3pct",
            "a ligand of 3 % of the mass bound in half of the particles, SNR 0.05",
            (0.0, 0.0),
            0.05,
            4000,
            ligand=(0.0, 0.03),
        ),
        Family(
            "ligand_1pct",
            "a ligand of 1 % of the mass bound in half of the particles, SNR 0.1",
            (0.0, 0.0),
            0.1,
            4000,
            ligand=(0.0, 0.01),
        ),
        Family("snr_0.003", "open vs closed at SNR 0.003", (0.0, 1.0), 0.003, 4000),
        Family(
            "unbalanced_10_90",
            "10 % open, 90 % in a state 3 Å CA-RMSD away, SNR 0.02",
            (0.0, _rmsd_fraction(3.0)),
            0.02,
            4000,
            proportions=(0.1, 0.9),
        ),
        Family(
            "ladder_5",
            "five states in even steps from open to closed (1.7 Å CA-RMSD apart), SNR 0.05",
            (0.0, 0.25, 0.5, 0.75, 1.0),
            0.05,
            10000,
        ),
        Family(
            "overclassed_3_of_2",
            "open vs closed, SNR 0.01, three classes asked for",
            (0.0, 1.0),
            0.01,
            4000,
            num_classes=3,
        ),
    ]
}


def ca_rmsd(t_a: float, t_b: float) -> float:
    """CA-RMSD in Å between the states ``t_a`` and ``t_b`` of the way from open to closed
    (linear interpolation of the superposed models: proportional to ``|t_a - t_b|``)."""
    open_, closed = builtin_structures()
    a = read_model_coordinates(open_, ca_only=True)
    b = read_model_coordinates(closed, ca_only=True)
    r, t = _kabsch(b, a)
    b = b @ r.T + t
    return float(abs(t_a - t_b) * np.sqrt(((a - b) ** 2).sum(1).mean()))


def family_maps(family: Family, work: Path) -> np.ndarray:
    """The true maps ``(k, BOX, BOX, BOX)`` float32 of ``family`` (intermediate models are
    written into ``work``)."""
    open_, closed = builtin_structures()
    centre = read_model_coordinates(open_).mean(0)
    work.mkdir(parents=True, exist_ok=True)
    maps = []
    for i, t in enumerate(family.states):
        model = write_interpolated_model(open_, closed, t, work / f"state_{i + 1}.pdb")
        maps.append(atomic_model_to_map(model, BOX, PIXEL_SIZE, BFACTOR, centre=centre))
    if family.ligand is not None:
        blob = ligand_site(maps[0], PIXEL_SIZE)[0]
        blob = blob / blob.sum()  # unit mass: each class adds its share of the protein's
        maps = [m + share * m.sum() * blob for m, share in zip(maps, family.ligand, strict=True)]
    return np.stack(maps).astype(np.float32)


def simulate_family(family: Family, work: Path, seed: int) -> Path:
    """Simulate ``family`` with ``seed`` into ``work/data`` (the particles, their true classes,
    the true maps and ``simulation.json`` for the oracle); returns ``particles.star``."""
    maps = family_maps(family, work / "models")
    settings = SimulationSettings(
        n_particles=family.n_particles, snr=family.snr, proportions=family.proportions, seed=seed
    )
    star = simulate_particles(maps, PIXEL_SIZE, work / "data", settings)
    write_map(work / "true_mean.mrc", maps.mean(0), PIXEL_SIZE)
    return star
