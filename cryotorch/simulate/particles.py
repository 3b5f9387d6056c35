"""Simulate a RELION particle set from K class maps, streamed to disk in chunks.

Every particle gets a class (drawn with the given proportions), a uniformly random rotation on
SO(3), a small random shift, a defocus with astigmatism, and the CTF; then white Gaussian noise.

**SNR** is the ratio of the mean per-pixel variance of the noise-free images (over the whole
box, CTF applied) to the variance of the noise: ``σ_noise² = mean_i var(signal_i) / snr``, with
the mean taken over the first ``min(n, 1000)`` particles, so that it does not depend on the
chunk size. ``snr = inf`` gives noise-free images. SNR 0.05 is a typical cryo-EM data set;
it depends on how much of the box the particle fills.

Outputs in ``output_dir`` (each written under a temporary name and renamed when complete, the
STAR file last): ``particles.mrcs`` (float32, pixel size in the header), ``particles.star``
(RELION 3.1, one optics group, image names relative to the folder, ``rlnRandomSubset`` 1/2),
``true_classes.txt`` (one line per particle in STAR row order: its true class, 1-based like
``rlnClassNumber``), ``class_NNN.mrc``, the maps the particles were made from, and
``simulation.json`` (the noise's σ per pixel, the class proportions, the projections'
padding and the settings: with the maps, what the oracle needs).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch
from tqdm import tqdm

from cryotorch import conventions
from cryotorch.errors import InputError
from cryotorch.evaluation import SIMULATION_RECORD, TRUE_CLASSES
from cryotorch.io.atomic import atomic_path
from cryotorch.io.checks import RANGES
from cryotorch.io.mrc import label_header, write_map
from cryotorch.io.star import write_star
from cryotorch.particles import OpticsGroups, ParticleTable
from cryotorch.physics.forward_model import particle_spectra
from cryotorch.physics.fourier import irfft_2d
from cryotorch.physics.projector import prepare_volumes

__all__ = ["SimulationSettings", "sample_uniform_rotations", "simulate_particles"]

PILOT_PARTICLES = 1000


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate. Lengths in Å, angles in degrees, voltage in kV, Cs in mm."""

    n_particles: int = 2000
    snr: float = 0.05
    proportions: tuple[float, ...] | None = None  # None: equal
    seed: int = 0
    shift_sigma_angstrom: float = 3.0
    defocus_min_angstrom: float = 10000.0
    defocus_max_angstrom: float = 25000.0
    astigmatism_max_angstrom: float = 1000.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.1
    chunk_size: int = 256
    pad: int = 2

    def __post_init__(self) -> None:
        """Refuse (ValueError naming the key, as in ``configs/simulate.yaml``) a value no
        simulation can use; the CTF's ranges are those a particle file is checked against."""
        for key in ("n_particles", "chunk_size", "pad"):
            if not getattr(self, key) >= 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.snr > 0:  # inf: no noise
            raise ValueError(f"snr must be > 0 (inf: no noise), got {self.snr}")
        for key in ("shift_sigma_angstrom", "astigmatism_max_angstrom"):
            if not 0 <= getattr(self, key) < 10_000:
                raise ValueError(f"{key} must be in [0, 10000) Å, got {getattr(self, key)}")
        for key, quantity in (
            ("defocus_min_angstrom", "defocus_u_angstrom"),
            ("defocus_max_angstrom", "defocus_u_angstrom"),
            ("voltage_kv", "voltage_kv"),
            ("spherical_aberration_mm", "spherical_aberration_mm"),
            ("amplitude_contrast", "amplitude_contrast"),
        ):
            low, high, _, unit, what = RANGES[quantity]
            if not low <= getattr(self, key) <= high:
                raise ValueError(
                    f"{key} must be in [{low:g}, {high:g}]{' ' + unit if unit else ''} ({what}), "
                    f"got {getattr(self, key)}"
                )
        if not self.defocus_min_angstrom <= self.defocus_max_angstrom:
            raise ValueError(
                f"defocus_min_angstrom ({self.defocus_min_angstrom}) must be <= "
                f"defocus_max_angstrom ({self.defocus_max_angstrom})"
            )


def sample_uniform_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` RELION matrices of uniformly random rotations (random unit quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    angle = 2 * np.arctan2(np.linalg.norm(q[:, 1:], axis=1), q[:, 0])
    axis = q[:, 1:] / np.maximum(np.linalg.norm(q[:, 1:], axis=1, keepdims=True), 1e-300)
    return conventions.rotvec_to_matrix(axis * angle[:, None])


def _draw_particles(
    settings: SimulationSettings, k: int, d: int, pixel_size: float, rng: np.random.Generator
) -> tuple[ParticleTable, np.ndarray]:
    """The per-particle parameters as a ParticleTable (image paths filled in later) and classes."""
    n = settings.n_particles
    p = (
        np.full(k, 1 / k)
        if settings.proportions is None
        else np.asarray(settings.proportions, float)
    )
    if len(p) != k or (p < 0).any() or p.sum() <= 0:
        raise InputError(
            "simulation settings",
            "proportions",
            f"expected {k} non-negative numbers, got {settings.proportions}",
        )
    classes = rng.choice(k, size=n, p=p / p.sum())
    rotation = sample_uniform_rotations(n, rng)
    origin = rng.normal(0.0, settings.shift_sigma_angstrom, size=(n, 2))
    defocus = rng.uniform(settings.defocus_min_angstrom, settings.defocus_max_angstrom, n)
    astig = rng.uniform(0.0, settings.astigmatism_max_angstrom, n)
    table = ParticleTable(
        image_path=np.full(n, "particles.mrcs"),  # made absolute when the STAR is written
        image_index=np.arange(n),
        rotation=rotation,
        origin_angstrom=origin,
        defocus_u_angstrom=defocus + astig / 2,
        defocus_v_angstrom=defocus - astig / 2,
        astigmatism_angle_deg=rng.uniform(-180.0, 180.0, n),
        phase_shift_deg=np.zeros(n),
        ctf_bfactor=np.zeros(n),
        ctf_scale=np.ones(n),
        optics_group=np.zeros(n, dtype=np.int64),
        random_subset=rng.integers(1, 3, n),
        optics=OpticsGroups(
            name=np.array(["opticsGroup1"]),
            pixel_size_angstrom=np.array([pixel_size]),
            image_size=np.array([d]),
            voltage_kv=np.array([settings.voltage_kv]),
            spherical_aberration_mm=np.array([settings.spherical_aberration_mm]),
            amplitude_contrast=np.array([settings.amplitude_contrast]),
        ),
    )
    return table, classes


def _signal(
    class_volumes: list[torch.Tensor],
    table: ParticleTable,
    classes: np.ndarray,
    rows: np.ndarray,
    d: int,
    pad: int,
) -> torch.Tensor:
    """Noise-free images ``(b, d, d)`` float32 of ``rows``, each from its own class's volume."""
    out = torch.empty((len(rows), d, d))
    for k, volumes in enumerate(class_volumes):
        mine = np.flatnonzero(classes[rows] == k)
        if mine.size == 0:
            continue
        spectra = particle_spectra(volumes, table, rows[mine], d, pad)
        out[torch.as_tensor(mine)] = irfft_2d(spectra[:, 0], d)
    return out


def _write_record(
    output_dir: Path,
    settings: SimulationSettings,
    k: int,
    d: int,
    pixel_size: float,
    noise_sigma: float,
    signal_variance: float,
) -> None:
    """``simulation.json``: what the oracle (:func:`cryotorch.oracle.oracle_posteriors`)
    needs beyond the maps and the particles: the noise's standard deviation per pixel (and
    the signal's variance), the class proportions drawn from, the padding of the projections,
    and the settings."""
    p = np.full(k, 1 / k) if settings.proportions is None else np.asarray(settings.proportions)
    record = {
        "noise_sigma": float(noise_sigma),  # per pixel, real space, the images' units
        "signal_variance": signal_variance,  # mean per-pixel variance of the noise-free images
        "proportions": (p / p.sum()).tolist(),
        "maps": [f"class_{i + 1:03d}.mrc" for i in range(k)],
        "box": d,
        "pixel_size_angstrom": pixel_size,
        "pad": settings.pad,
        "settings": {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(settings).items()
        },
    }
    with atomic_path(output_dir / SIMULATION_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=True) + "\n")


def simulate_particles(
    maps: np.ndarray, pixel_size: float, output_dir: str | Path, settings: SimulationSettings
) -> Path:
    """Simulate particles from ``maps (k, d, d, d)`` (voxel ``pixel_size`` Å) into ``output_dir``.

    Returns the path of ``particles.star``. The same settings (seed included) give
    bit-identical files. Only one chunk of images is in memory at a time.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    k, d = maps.shape[0], maps.shape[-1]
    rng = np.random.default_rng(settings.seed)
    table, classes = _draw_particles(settings, k, d, pixel_size, rng)
    volumes = prepare_volumes(torch.as_tensor(maps, dtype=torch.float32), settings.pad)
    class_volumes = [volumes[:, 2 * i : 2 * i + 2].contiguous() for i in range(k)]  # one class each
    del volumes

    pilot = np.arange(min(settings.n_particles, PILOT_PARTICLES))
    pilot_var = [
        _signal(class_volumes, table, classes, rows, d, settings.pad).var(dim=(-2, -1))
        for rows in np.array_split(pilot, -(-len(pilot) // settings.chunk_size))
    ]
    signal_var = float(torch.cat(pilot_var).double().mean())
    noise_sigma = np.sqrt(signal_var / settings.snr)  # snr = inf: no noise

    n = settings.n_particles
    with atomic_path(output_dir / "particles.mrcs") as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, d, d), mrc_mode=2, overwrite=True) as mrc:  # header
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
            label_header(mrc)
            data_offset = 1024 + int(mrc.header.nsymbt)  # header + extended header
        # The images are written with plain file writes, not through a memory map, so that no
        # page of the (possibly huge) stack stays mapped in this process.
        bar = tqdm(total=n, desc="simulating", unit="particle", leave=False, disable=None)
        with open(tmp, "r+b") as f, bar:  # the bar: on a terminal only
            for c, start in enumerate(range(0, n, settings.chunk_size)):
                rows = np.arange(start, min(n, start + settings.chunk_size))
                images = _signal(class_volumes, table, classes, rows, d, settings.pad).numpy()
                noise = np.random.default_rng([settings.seed, 1, c]).standard_normal(
                    images.shape, np.float32
                )
                f.seek(data_offset + start * d * d * 4)
                f.write((images + np.float32(noise_sigma) * noise).astype("<f4").tobytes())
                bar.update(len(rows))
    for i, volume in enumerate(maps):
        write_map(output_dir / f"class_{i + 1:03d}.mrc", volume, pixel_size)
    _write_record(output_dir, settings, k, d, pixel_size, noise_sigma, signal_var)
    with atomic_path(output_dir / TRUE_CLASSES) as tmp:
        np.savetxt(
            tmp,
            classes + 1,
            fmt="%d",
            header="true class of each particle, 1-based, STAR row order",
        )
    star = output_dir / "particles.star"
    stack = str((output_dir / "particles.mrcs").resolve())
    table = dataclasses.replace(table, image_path=np.full(len(table), stack))
    write_star(table, star, absolute_paths=False)  # image names relative to the STAR's folder
    return star
