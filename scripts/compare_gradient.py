"""EM against gradient training (optim=gradient) on the same simulated particles.

    python scripts/compare_gradient.py [--particles 10000] [--box 64] [--snr 0.05]
        [--closed-fraction 1.0] [--threads 2] [--workdir DIR] [--extra k=v ...]

Simulates adenylate kinase open against (partly) closed (the benchmark's data; SNR and the
fraction of the closing motion set the difficulty), then runs ``cryotorch-classify`` with the
default settings (online then full-batch EM) and with ``optim=gradient`` (Adam, same
posterior-layer schedules, epochs instead of iterations), each in its own process, and also
with the denoising regulariser. Prints a Markdown table: final accuracy, iterations or epochs,
wall time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cryotorch.evaluation import classification_accuracy, read_true_classes
from cryotorch.simulate.atomic import (
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
    write_interpolated_model,
)
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

RUNS = {
    "EM (default)": [],
    "EM, denoise regulariser": ["model.regulariser=denoise"],
    "gradient (optim=gradient, Adam)": ["optim=gradient"],
    "gradient, denoise regulariser": ["optim=gradient", "model.regulariser=denoise"],
}


def simulate(folder: Path, box: int, n: int, snr: float, closed: float) -> Path:
    star = folder / "data" / "particles.star"
    if star.is_file():
        return star
    folder.mkdir(parents=True, exist_ok=True)
    open_, closed_model = builtin_structures()
    centre = read_model_coordinates(open_).mean(0)
    maps = []
    for i, fraction in enumerate((0.0, closed)):
        model = write_interpolated_model(open_, closed_model, fraction, folder / f"model_{i}.pdb")
        maps.append(atomic_model_to_map(model, box, 1.5, 50.0, centre=centre))
    settings = SimulationSettings(n_particles=n, snr=snr, seed=1)
    return simulate_particles(np.stack(maps), 1.5, folder / "data", settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--closed-fraction", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryotorch-gradient-"))
    star = simulate(work, args.box, args.particles, args.snr, args.closed_fraction)
    truth = read_true_classes(star.parent)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("| method | accuracy | iterations / epochs | wall (s) |\n|---|---|---|---|")
    for name, overrides in RUNS.items():
        out = work / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        shutil.rmtree(out, ignore_errors=True)
        command = [
            sys.executable, "-m", "cryotorch.cli.classify", f"data.particles={star}",
            f"output_dir={out}", "logger=none", "logger.quiet=true", *overrides, *args.extra,
        ]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        wall = time.perf_counter() - t0
        predicted = np.load(out / "posteriors.npy").argmax(1)
        accuracy = classification_accuracy(predicted, truth, 2)
        iterations = sum(1 for _ in open(out / "iterations.csv")) - 1
        print(f"| {name} | {100 * accuracy:.2f} % | {iterations} | {wall:.0f} |", flush=True)
    print(
        f"\n{args.particles} particles, box {args.box}, 1.5 Å/px, SNR {args.snr}, AdK open vs "
        f"{100 * args.closed_fraction:.0f} % closed; {args.threads} threads. Work folder {work}."
    )


if __name__ == "__main__":
    main()
