"""cryotorch-classify against relion_refine --K 2 --skip_align on the same simulated data.

    python scripts/compare_relion_classify.py --setting easy   # AdK open vs closed, SNR 0.05
    python scripts/compare_relion_classify.py --setting hard   # AdK open vs 30 % closed, SNR 0.02
        [--particles 10000] [--box 64] [--iterations 25] [--threads 2] [--seeds 1]
        [--first-seed 1] [--no-relion] [--workdir DIR]

Both classify the same particles.star (simulated by cryotorch with known classes), one data set
per seed. RELION runs ``relion_refine --K 2 --skip_align --tau2_fudge 4 --ctf --ini_high 20
--flatten_solvent --zero_mask`` from the consensus map (``relion_reconstruct --ctf`` of all
particles); cryotorch runs its defaults (cryoSPARC-like, 5 Å) and its ``fast`` (10 Å) and
``relion_like`` presets. Prints the oracle's accuracy (the Bayes-optimal assignment with the
true maps, noise and proportions: :mod:`cryotorch.oracle`) and, for each method: the final
accuracy (mean over the data sets, and their range), how far below the oracle (points, mean
and range of the per-set gaps), seconds per iteration (median), the iterations run and the first iteration at
which the accuracy exceeded 95 % (median). Needs RELION's programs on PATH (or --no-relion).
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
from hydra import compose, initialize_config_module

from cryotorch.cli.schema import read_run_config
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify
from cryotorch.evaluation import classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_particles
from cryotorch.oracle import oracle_posteriors
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
    star: Path, truth: np.ndarray, iterations: int, threads: int, diameter: float, k: int = 2
) -> dict:
    """``relion_refine --K k --skip_align`` from the consensus (``relion_reconstruct --ctf`` of
    all particles, ``consensus.mrc`` beside them): per-iteration accuracy, seconds per
    iteration (its wall time / iterations) and ``seconds`` (the refinement's wall time)."""
    folder = star.parent
    subprocess.run(
        ["relion_reconstruct", "--i", star.name, "--o", "consensus.mrc", "--ctf"],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    (folder / "relion").mkdir(exist_ok=True)
    args = [
        "relion_refine", "--i", star.name, "--o", "relion/run", "--ref", "consensus.mrc", "--K", str(k),
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
        accuracy.append(classification_accuracy(data["rlnClassNumber"].to_numpy() - 1, truth, k))
    return {
        "accuracy": accuracy,
        "seconds_per_iteration": seconds / iterations,
        "seconds": seconds,
        "classes": data["rlnClassNumber"].to_numpy() - 1,
    }


def run_cryotorch(star: Path, truth: np.ndarray, overrides: list[str], threads: int) -> dict:
    torch.set_num_threads(threads)
    with initialize_config_module("cryotorch.configs", version_base="1.3"):
        cfg = compose("classify", [f"data.particles={star}", *overrides])
    settings = read_run_config(cfg).settings()
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
            images.image_shape[-1],
            float(table.pixel_size_angstrom[0]),
            settings.model.target_resolution,
        )
        result = classify(
            BatchMaker(images, d_work, torch.device("cpu"), pad=settings.model.pad),
            settings,
            monitor,
        )
    final = classification_accuracy(result.posteriors.argmax(1), truth, 2)
    return {"accuracy": [*accuracy[:-1], final], "seconds_per_iteration": float(np.mean(seconds))}


def first_above(accuracy: list[float], level: float) -> int | None:
    """The first iteration (from 1) whose accuracy exceeds ``level``; None if none does."""
    return next((i + 1 for i, a in enumerate(accuracy) if a > level), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="easy")
    ap.add_argument("--particles", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="data sets, simulated with seeds ...")
    ap.add_argument("--first-seed", type=int, default=1, help="... first-seed, first-seed + 1, ...")
    ap.add_argument("--no-relion", action="store_true", help="cryotorch's rows only")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"cryotorch-vs-relion-{args.setting}-"))
    diameter = 0.9 * args.box * args.pixel_size
    quiet = ["logger=none", "logger.quiet=true"]
    presets = {
        "cryotorch (default)": quiet,
        "cryotorch (fast)": [*quiet, "experiment=fast"],
        "cryotorch (relion_like)": [
            *quiet,
            "experiment=relion_like",
            f"optim.max_iterations={args.iterations}",
        ],
    }
    rows: dict[str, list[dict]] = {}
    oracle: list[float] = []  # per data set: the Bayes-optimal accuracy (true maps and noise)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        folder = work / f"seed_{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        star = folder / "data" / "particles.star"
        if not star.exists():
            star = simulate(folder, args.setting, args.particles, args.box, args.pixel_size, seed)
        truth = read_true_classes(star.parent)
        oracle.append(oracle_posteriors(star).accuracy)
        if not args.no_relion:
            rows.setdefault("relion_refine", []).append(
                run_relion(star, truth, args.iterations, args.threads, diameter)
            )
        for name, overrides in presets.items():
            rows.setdefault(name, []).append(run_cryotorch(star, truth, overrides, args.threads))
    fraction, snr = SETTINGS[args.setting]
    print(
        f"\n{args.setting}: AdK open vs {fraction:.0%} closed, {args.particles} particles, "
        f"box {args.box}, SNR {snr}, {args.seeds} data set(s) (seeds {args.first_seed}-"
        f"{args.first_seed + args.seeds - 1})"
    )
    best = 100 * np.array(oracle)
    best_spread = f" ({best.min():.2f}-{best.max():.2f})" if len(best) > 1 else ""
    print("| method | final accuracy | below the oracle | s / iteration | iterations | "
          "first iteration > 95 % |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(f"| oracle (true maps, noise, proportions) | {best.mean():.2f} %{best_spread} | - | - | - "
          "| - |")  # fmt: skip
    for name, runs in rows.items():
        final = np.array([100 * r["accuracy"][-1] for r in runs])
        spread = f" ({final.min():.2f}-{final.max():.2f})" if len(runs) > 1 else ""
        gaps = best - final
        gap = f"{gaps.mean():.2f}" + (
            f" ({gaps.min():.2f}-{gaps.max():.2f})" if len(runs) > 1 else ""
        )
        seconds = float(np.median([r["seconds_per_iteration"] for r in runs]))
        iterations = float(np.mean([len(r["accuracy"]) for r in runs]))
        firsts = [f for r in runs if (f := first_above(r["accuracy"], 0.95)) is not None]
        never = len(runs) - len(firsts)
        first = "never" if not firsts else f"{float(np.median(firsts)):g}"
        if firsts and never:
            first += f" ({never} never)"
        print(
            f"| {name} | {final.mean():.2f} %{spread} | {gap} | {seconds:.2f} | {iterations:.3g} "
            f"| {first} |"
        )
    print(f"(work folder {work}; iterations counted from 1; cryotorch's include online-EM ones)")


if __name__ == "__main__":
    main()
