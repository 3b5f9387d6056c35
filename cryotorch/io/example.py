"""A small built-in particle set on disk, for the demo command and the tests.

It is not a simulation (``cryotorch.simulate`` is); it is a set of noise images with varied
poses, shifts, CTFs and two optics groups, enough to exercise every format path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryotorch.io.mrc import write_stack
from cryotorch.io.star import write_star_blocks

__all__ = ["write_example_star"]


def write_example_star(
    folder: str | Path, n_particles: int = 200, box: int = 32, seed: int = 0
) -> Path:
    """Write ``particles.star`` (RELION 3.1, two optics groups) and two stacks into ``folder``.

    Returns the STAR file's path. Stack paths in the STAR are relative to ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixel_size = (1.5, 1.5)  # both groups share the pixel size (the stacks are one box size)
    halves = [n_particles // 2, n_particles - n_particles // 2]
    names = []
    for g, n in enumerate(halves):
        stack = f"Particles/stack_{g + 1}.mrcs"
        images = rng.normal(size=(n, box, box)).astype(np.float32)
        (folder / "Particles").mkdir(exist_ok=True)
        write_stack(folder / stack, images, pixel_size[g])
        names += [f"{i + 1:06d}@{stack}" for i in range(n)]
    q = rng.normal(size=(n_particles, 4))  # uniform rotations through random unit quaternions
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rot = np.degrees(np.arctan2(q[:, 3], q[:, 0]) + np.arctan2(q[:, 1], q[:, 2]))
    tilt = np.degrees(2 * np.arctan2(np.hypot(q[:, 1], q[:, 2]), np.hypot(q[:, 0], q[:, 3])))
    psi = np.degrees(np.arctan2(q[:, 3], q[:, 0]) - np.arctan2(q[:, 1], q[:, 2]))
    wrap = lambda a: (a + 180.0) % 360.0 - 180.0  # noqa: E731
    defocus = rng.uniform(8000, 25000, n_particles)
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnAngleRot": wrap(rot),
            "rlnAngleTilt": tilt,
            "rlnAnglePsi": wrap(psi),
            "rlnOriginXAngst": rng.uniform(-4, 4, n_particles),
            "rlnOriginYAngst": rng.uniform(-4, 4, n_particles),
            "rlnDefocusU": defocus + rng.uniform(0, 500, n_particles),
            "rlnDefocusV": defocus,
            "rlnDefocusAngle": rng.uniform(-180, 180, n_particles),
            "rlnPhaseShift": np.zeros(n_particles),
            "rlnCtfBfactor": np.zeros(n_particles),
            "rlnOpticsGroup": np.repeat([1, 2], halves),
            "rlnRandomSubset": rng.integers(1, 3, n_particles),
            "rlnMicrographName": [f"mic_{i // 20:03d}.mrc" for i in range(n_particles)],
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographOriginalPixelSize": [0.75, 0.75],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 1.4],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": list(pixel_size),
            "rlnImageSize": [box, box],
            "rlnImageDimensionality": [2, 2],
        }
    )
    path = folder / "particles.star"
    write_star_blocks({"optics": optics, "particles": particles}, path)
    return path
