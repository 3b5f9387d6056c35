"""cryotorch's projector and reconstruction next to RELION's own programs; prints the figures.

    python scripts/compare_relion_physics.py [--box 32] [--particles 1500] [--workdir DIR]

1. ``relion_project --ctf`` against cryotorch's forward model (per-image correlation, scale).
2. ``relion_reconstruct --ctf`` of particles simulated by cryotorch (noise-free): FSC to the map.
3. cryotorch's reconstruction and ``relion_reconstruct`` of ``relion_project --ctf`` particles:
   both FSCs to the input map, shell by shell.
Needs RELION's programs on PATH.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import torch

from cryotorch.io import ParticleImages, read_map, read_particles, write_map
from cryotorch.io.example import write_example_star
from cryotorch.physics.forward_model import particle_spectra
from cryotorch.physics.fourier import irfft_2d
from cryotorch.physics.fsc import fourier_shell_correlation
from cryotorch.physics.projector import prepare_volumes
from cryotorch.physics.reconstruction import reconstruct_particles
from cryotorch.simulate.particles import SimulationSettings, simulate_particles


def blobs(d: int) -> np.ndarray:
    z, y, x = np.mgrid[:d, :d, :d] - d // 2
    vol = np.zeros((d, d, d), dtype=np.float32)
    for i, (cx, cy, cz) in enumerate([(3, 0, -5), (-4, 5, 2), (0, -6, 4), (6, 4, 6), (-5, -3, -4)]):
        vol += (1 + 0.3 * i) * np.exp(
            -((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * 1.5**2)
        )
    return vol


def run(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), cwd=cwd, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--particles", type=int, default=1500)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryotorch-relion-"))
    work.mkdir(parents=True, exist_ok=True)
    d = args.box
    truth = blobs(d)
    write_map(work / "map.mrc", truth, 1.5)
    write_example_star(work, n_particles=args.particles, box=d)
    run(
        "relion_project",
        "--i",
        "map.mrc",
        "--o",
        "proj",
        "--ctf",
        "--ang",
        "particles.star",
        cwd=work,
    )
    table = read_particles(work / "proj.star")
    rows = np.arange(len(table))
    vol = torch.from_numpy(read_map(work / "map.mrc")[0]).double()
    spectra = particle_spectra(prepare_volumes(vol[None]), table, rows, d, dtype=torch.float64)
    ours_images = irfft_2d(spectra[:, 0], d).numpy()
    with ParticleImages(table) as images:
        relion_images = images.read(rows).astype(np.float64)
        ours_map = reconstruct_particles(images)
    corr = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1]
        for a, b in zip(ours_images, relion_images, strict=True)
    ]
    scale = (ours_images * relion_images).sum() / (ours_images**2).sum()
    print(f"1. relion_project --ctf vs cryotorch, {len(rows)} images, box {d}, 2 optics groups:")
    print(
        f"   correlation min {min(corr):.9f}, mean {np.mean(corr):.9f}; scale relion/cryotorch {scale:.5f}"
    )

    run("relion_reconstruct", "--i", "proj.star", "--o", "relion.mrc", "--ctf", cwd=work)
    relion_map = torch.from_numpy(mrcfile.read(work / "relion.mrc").copy()).double()
    fsc_ours = fourier_shell_correlation(ours_map, vol)
    fsc_relion = fourier_shell_correlation(relion_map, vol)

    sim = work / "sim"
    simulate_particles(
        truth[None], 1.5, sim, SimulationSettings(n_particles=args.particles, snr=float("inf"))
    )
    run("relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf", cwd=sim)
    fsc_sim = fourier_shell_correlation(
        torch.from_numpy(mrcfile.read(sim / "relion.mrc").copy()).double(), vol
    )

    print("2./3. FSC with the input map, shell by shell (Nyquist = shell", d // 2, "):")
    print(
        f"   {'shell':>5} {'relion_reconstruct of cryotorch sim':>36} {'cryotorch recon':>16} {'relion recon':>13}"
    )
    for s in range(1, d // 2 + 1):
        print(
            f"   {s:5d} {float(fsc_sim[s]):36.3f} {float(fsc_ours[s]):16.3f} {float(fsc_relion[s]):13.3f}"
        )
    print(f"   (3: both from relion_project --ctf particles; work folder {work})")


if __name__ == "__main__":
    main()
