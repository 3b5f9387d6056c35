"""Particle sets of several optics groups (pixel sizes, boxes) simulated from the same two
structures, with their one-group equivalents: the tests of issue 22's mixed optics.

Each sampling ``(box, pixel size)`` gets its own maps, made by gemmi from the atomic models at
that sampling, and its own noise-free simulation with the same seed: the same classes, poses,
shifts (Å) and defoci, particle for particle. Noise is then added as a detector adds it,
the same for every sampling in physical units: the simulator's images are sums of density
over voxels (values scale as 1 / pixel size), so white noise of standard deviation
``σ_ref (p_ref / p)²`` at pixel size ``p`` has the same power per unit of spatial frequency,
relative to the signal, as ``σ_ref`` at ``p_ref`` (the same dose per Å²). With
``same_scale`` the images of each sampling are also multiplied by ``p / p_ref``, so that a
particle's signal has the same real-space values at every sampling (one intensity scale, as
the classification assumes); without it, a coarser sampling's signal is fainter.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import mrcfile
import numpy as np

from cryotorch.evaluation import TRUE_CLASSES, read_true_classes
from cryotorch.io import read_particles, write_particles
from cryotorch.particles import OpticsGroups, ParticleTable
from cryotorch.simulate.atomic import (
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
    write_interpolated_model,
)
from cryotorch.simulate.particles import (
    SimulationSettings,
    sample_uniform_rotations,
    simulate_particles,
)

Sampling = tuple[int, float]  # (box, pixel size in Å)


def simulate_sampling(
    work: Path, sampling: Sampling, n: int, seed: int, closed_fraction: float
) -> Path:
    """Noise-free particles of AdK open and ``closed_fraction`` of the way to closed at
    ``sampling``, into a folder of ``work`` named by the arguments; the STAR file (simulated
    once per folder)."""
    box, psize = sampling
    folder = work / f"box{box}_{psize:g}_n{n}_closed{closed_fraction:g}_seed{seed}"
    star = folder / "particles.star"
    if star.is_file():
        return star
    folder.mkdir(parents=True, exist_ok=True)
    open_, closed = builtin_structures()
    second = write_interpolated_model(open_, closed, closed_fraction, folder / "second.pdb")
    centre = read_model_coordinates(open_).mean(0)
    maps = np.stack(
        [atomic_model_to_map(p, box, psize, 50.0, centre=centre) for p in (open_, second)]
    )
    settings = SimulationSettings(n_particles=n, snr=math.inf, seed=seed)
    return simulate_particles(maps, psize, folder, settings)


def noise_sigma(star: Path, snr: float) -> float:
    """The simulator's noise standard deviation for ``snr`` on the noise-free ``star``'s
    images: ``sqrt(mean variance of the first 1000 images / snr)``."""
    with mrcfile.mmap(star.parent / "particles.mrcs", mode="r") as mrc:
        images = np.asarray(mrc.data[:1000], dtype=np.float64)
    return float(np.sqrt(images.var(axis=(-2, -1)).mean() / snr))


def add_noise(
    star: Path, out: Path, sigma: float, scale: float, seed: int, group: int, rows: np.ndarray
) -> ParticleTable:
    """``scale`` × (the images of ``rows`` of the noise-free ``star`` + white noise of
    standard deviation ``sigma``, drawn with seed ``[seed, 7, group]``), written to ``out`` (a
    stack); their table, pointing at it."""
    with mrcfile.mmap(star.parent / "particles.mrcs", mode="r") as mrc:
        signal = np.asarray(mrc.data[rows], dtype=np.float32)
        psize = float(mrc.voxel_size.x)
    noise = np.random.default_rng([seed, 7, group]).standard_normal(signal.shape, np.float32)
    images = (scale * (signal + np.float32(sigma) * noise)).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(out, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = psize
    table = read_particles(star).take(rows)
    return dataclasses.replace(
        table,
        image_path=np.full(len(rows), str(out.resolve())),
        image_index=np.arange(len(rows)),
        source=None,  # written afresh, with the new stack
    )


def join_tables(tables: list[ParticleTable]) -> ParticleTable:
    """One table of the rows of ``tables`` (one optics group each), group ``i + 1`` the
    ``i``-th's, in that order; no source record (written afresh)."""
    columns = {}
    for f in dataclasses.fields(ParticleTable):
        if f.name in ("optics", "optics_group", "source"):
            continue
        columns[f.name] = np.concatenate([getattr(t, f.name) for t in tables])
    groups = [t.optics for t in tables]
    optics = OpticsGroups(
        name=np.array([f"opticsGroup{i + 1}" for i in range(len(tables))]),
        **{
            f.name: np.concatenate([getattr(g, f.name) for g in groups])
            for f in dataclasses.fields(OpticsGroups)
            if f.name not in ("name", "number")
        },
    )
    group = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in enumerate(tables)])
    return ParticleTable(**columns, optics_group=group, optics=optics)


def mixed_set(
    work: Path,
    samplings: list[Sampling],
    n: int,
    snr: float,
    seed: int,
    closed_fraction: float = 0.5,
    same_scale: bool = True,
) -> Path:
    """``n`` particles in ``len(samplings)`` optics groups, consecutive equal shares, group
    ``i`` at ``samplings[i]`` (the first is the reference: ``snr`` is the simulator's SNR
    there), written to ``work/<name>/particles.star`` with ``true_classes.txt`` beside it.
    ``samplings`` of one entry is the one-group equivalent: the same particles, the same
    noise where the sampling is the same. Returns the particle file."""
    name = "_".join(f"box{d}_{p:g}" for d, p in samplings) + ("" if same_scale else "_raw")
    folder = work / f"{name}_n{n}_snr{snr:g}_closed{closed_fraction:g}_seed{seed}"
    path = folder / "particles.star"
    if path.is_file():
        return path
    ref_psize = samplings[0][1]
    stars = [simulate_sampling(work / "clean", s, n, seed, closed_fraction) for s in samplings]
    sigma_ref = noise_sigma(stars[0], snr)
    shares = np.array_split(np.arange(n), len(samplings))
    tables = []
    for i, ((_, psize), star, rows) in enumerate(zip(samplings, stars, shares, strict=True)):
        sigma = sigma_ref * (ref_psize / psize) ** 2
        scale = psize / ref_psize if same_scale else 1.0
        tables.append(add_noise(star, folder / f"group{i + 1}.mrcs", sigma, scale, seed, i, rows))
    table = tables[0] if len(tables) == 1 else join_tables(tables)
    write_particles(table, path)
    truth = read_true_classes(stars[0].parent)
    np.savetxt(folder / TRUE_CLASSES, truth + 1, fmt="%d")
    return path


def random_groups(folder: Path, groups: list[tuple[int, float, int]], seed: int = 0) -> Path:
    """``particles.star`` in ``folder`` of optics groups ``(box, pixel size, n particles)``,
    one stack each of Gaussian noise images, with random poses, shifts (a few Å) and defoci:
    the shapes and optics of a mixed data set, fast to make."""
    rng = np.random.default_rng(seed)
    tables = []
    for i, (box, psize, n) in enumerate(groups):
        stack = folder / f"group{i + 1}.mrcs"
        folder.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(stack, overwrite=True) as mrc:
            mrc.set_data(rng.normal(size=(n, box, box)).astype(np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = psize
        defocus = rng.uniform(10000, 20000, n)
        tables.append(
            ParticleTable(
                image_path=np.full(n, str(stack.resolve())),
                image_index=np.arange(n),
                rotation=sample_uniform_rotations(n, rng),
                origin_angstrom=rng.normal(0, 3.0, (n, 2)),
                defocus_u_angstrom=defocus + 200,
                defocus_v_angstrom=defocus - 200,
                astigmatism_angle_deg=rng.uniform(-180, 180, n),
                phase_shift_deg=np.zeros(n),
                ctf_bfactor=np.zeros(n),
                ctf_scale=np.ones(n),
                optics_group=np.zeros(n, dtype=np.int64),
                random_subset=rng.integers(1, 3, n),
                optics=OpticsGroups(
                    name=np.array(["g"]),
                    pixel_size_angstrom=np.array([psize]),
                    image_size=np.array([box]),
                    voltage_kv=np.array([300.0 - 100 * i]),
                    spherical_aberration_mm=np.array([2.7]),
                    amplitude_contrast=np.array([0.1]),
                ),
            )
        )
    path = folder / "particles.star"
    write_particles(join_tables(tables), path)
    return path
