"""cryotorch-classify against relion_refine --K 2 --skip_align on the same simulated data.

    python scripts/compare_relion_classify.py --setting easy   # AdK open vs closed, SNR 0.05
    python scripts/compare_relion_classify.py --setting hard   # AdK open vs 30 % closed, SNR 0.02
        [--particles 10000] [--box 64] [--iterations 25] [--threads 2] [--workdir DIR]

Both classify the same particles.star (simulated by cryotorch with known classes). RELION runs
``relion_refine --K 2 --skip_align --tau2_fudge 4 --ctf --ini_high 20 --flatten_solvent
--zero_mask`` from the consensus map (``relion_reconstruct --ctf`` of all particles);
cryotorch runs its defaults (cryoSPARC-like) and its ``relion_like`` and ``small_differences``
presets. Prints, for each:
the final accuracy, seconds per iteration, and the first iteration at which the accuracy
exceeded 95 %. Needs RELION's programs on PATH.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile
import torch
from hydra import compose, initialize_config_dir

from cryotorch.cli.classify import settings_from_config
from cryotorch.cli.configs import CONFIG_DIR
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.loop import classify
from cryotorch.evaluation import classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_particles
from cryotorch.physics.fourier import cropped_box_for_resolution
from cryotorch.simulate.atomic import (
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
    write_interpolated_model,
)
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

SETTINGS = {"easy": (1.0, 0.05), "hard": (0.3, 0.02)}  # fraction of the way to closed, SNR


def simulate(work: Path, setting: str, n: int, box: int, pixel_size: float, seed: int) -> Path:
    fraction, snr = SETTINGS[setting]
    open_, closed = builtin_structures()
    second = write_interpolated_model(open_, closed, fraction, work / "second.pdb")
    centre = read_model_coordinates(open_).mean(0)
    maps = np.stack(
        [atomic_model_to_map(p, box, pixel_size, 50.0, centre=centre) for p in (open_, second)]
    )
    return simulate_particles(
        maps, pixel_size, work / "data", SimulationSettings(n_particles=n, snr=snr, seed=seed)
    )


def run_relion(
    star: Path, truth: np.ndarray, iterations: int, threads: int, diameter: float
) -> dict:
    folder = star.parent
    subprocess.run(
        ["relion_reconstruct", "--i", star.name, "--o", "consensus.mrc", "--ctf"],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    (folder / "relion").mkdir(exist_ok=True)
    args = [
        "relion_refine", "--i", star.name, "--o", "relion/run", "--ref", "consensus.mrc", "--K", "2",
        "--skip_align", "--tau2_fudge", "4", "--iter", str(iterations), "--ctf", "--ini_high", "20",
        "--flatten_solvent", "--zero_mask", "--particle_diameter", f"{diameter:.1f}", "--pad", "2",
        "--j", str(threads), "--random_seed", "0", "--dont_combine_weights_via_disc", "--pool", "30",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(args, cwd=folder, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    accuracy = []
    for it in range(1, iterations + 1):
        data = starfile.read(folder / "relion" / f"run_it{it:03d}_data.star", always_dict=True)[
            "particles"
        ]
        accuracy.append(classification_accuracy(data["rlnClassNumber"].to_numpy() - 1, truth, 2))
    return {"accuracy": accuracy, "seconds_per_iteration": seconds / iterations}


def run_cryotorch(star: Path, truth: np.ndarray, overrides: list[str], threads: int) -> dict:
    torch.set_num_threads(threads)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("classify", [f"data.particles={star}", *overrides])
    settings = settings_from_config(cfg)
    table = read_particles(star)
    accuracy, seconds = [], []

    def monitor(entry: dict, maps: torch.Tensor, assignment: np.ndarray) -> None:
        seconds.append(entry["seconds"])
        seen = assignment >= 0
        accuracy.append(
            classification_accuracy(assignment[seen], truth[seen], 2)
            if seen.all()
            else float("nan")
        )

    with ParticleImages(table) as images:
        d_work, _ = cropped_box_for_resolution(
            images.image_shape[-1], float(table.pixel_size_angstrom[0]), settings.target_resolution
        )
        result = classify(
            BatchMaker(images, d_work, torch.device("cpu"), pad=settings.pad), settings, monitor
        )
    final = classification_accuracy(result.posteriors.argmax(1), truth, 2)
    return {"accuracy": [*accuracy[:-1], final], "seconds_per_iteration": float(np.mean(seconds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="easy")
    ap.add_argument("--particles", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"cryotorch-vs-relion-{args.setting}-"))
    work.mkdir(parents=True, exist_ok=True)
    star = simulate(work, args.setting, args.particles, args.box, args.pixel_size, args.seed)
    truth = read_true_classes(star.parent)
    diameter = 0.9 * args.box * args.pixel_size
    relion_like = [
        "logger=none",
        "logger.quiet=true",
        "experiment=relion_like",
        f"optim.max_iterations={args.iterations}",
    ]
    small_differences = ["logger=none", "logger.quiet=true", "experiment=small_differences"]
    rows = {
        "relion_refine": run_relion(star, truth, args.iterations, args.threads, diameter),
        "cryotorch (default)": run_cryotorch(
            star, truth, ["logger=none", "logger.quiet=true"], args.threads
        ),
        "cryotorch (relion_like)": run_cryotorch(star, truth, relion_like, args.threads),
        "cryotorch (small_differences)": run_cryotorch(
            star, truth, small_differences, args.threads
        ),
    }
    fraction, snr = SETTINGS[args.setting]
    print(
        f"\n{args.setting}: AdK open vs {fraction:.0%} closed, {args.particles} particles, box {args.box}, SNR {snr}"
    )
    print(
        f"{'method':30s} {'final accuracy':>15s} {'s/iteration':>12s} {'first it > 95 %':>16s} {'iterations':>11s}"
    )
    for name, r in rows.items():
        above = [i + 1 for i, a in enumerate(r["accuracy"]) if a > 0.95]
        first = str(above[0]) if above else "never"
        print(
            f"{name:30s} {100 * r['accuracy'][-1]:14.2f}% {r['seconds_per_iteration']:12.2f} {first:>16s} "
            f"{len(r['accuracy']):11d}"
        )
    print(
        f"(work folder {work}; iterations counted from 1; cryotorch's include online-EM mini-batches)"
    )


if __name__ == "__main__":
    main()
