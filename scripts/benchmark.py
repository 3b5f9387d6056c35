"""cryotorch against relion_refine: seconds per iteration, throughput, memory and accuracy.

    python scripts/benchmark.py [--boxes 64 128] [--classes 2 4 8] [--particles 10000]
        [--iterations 5] [--resolution 8] [--threads 2] [--device cpu|cuda] [--no-relion]
        [--kernels numba [torch compiled]] [--variants "" "model.reseed=3"] [--seeds 1]
        [--workdir DIR] [--output benchmark.md]
    python scripts/benchmark.py --defaults [--boxes 64] [--classes 2 4] [--seeds 3] ...

For each box it simulates ``--particles`` particles (1.5 Å/px, SNR 0.05) of K classes: adenylate
kinase from open to closed in K even steps (the built-in models, interpolated), equal shares.
Then, on the same particles, the same machine and the same number of threads, one after the
other:

- ``relion_refine --skip_align --K K --j T --iter N --ini_high R --strict_highres_exp R``
  (``--tau2_fudge 4 --ctf --pad 2``, from the consensus ``relion_reconstruct --ctf``); seconds
  per iteration = its wall time / N (its start-up included);
- ``cryotorch-classify experiment=relion_like optim.max_iterations=N-1`` at the same resolution
  R (images Fourier-cropped to it) and RELION's solvent mask (``--particle_diameter`` 86.4 Å
  at both boxes, and its soft edge of 5 pixels, 7.5 Å): RELION's first iteration assigns
  every particle to a random class (its ``do_generate_seeds``), which is cryotorch's
  initialisation, so after N - 1 EM iterations both have scored the particles against their
  classes N - 1 times; seconds per iteration = the median of its EM iterations after the first
  (which also holds the initialisation); once per ``--kernels`` choice (numba, the CPU
  default; torch, the reference code; compiled, torch.compile, whose compilation falls in the
  first iteration); and once per ``--variants`` entry, Hydra overrides added to that command
  ("" is ``relion_like`` as it is; e.g. ``model.reseed=3`` lets an emptied class be
  re-seeded, which RELION does not do).

"wall" is each process's whole run, start-up, reading and initialisation included.

With ``--defaults`` each program runs as a user runs it instead, and the table compares whole
runs: ``relion_refine --iter 25 --ini_high 20`` (the same options otherwise, but no
``--strict_highres_exp``: its resolution follows its FSC) against ``cryotorch-classify``'s
defaults (no preset, no fixed resolution: its resolution schedule, online EM, its stopping rule;
TensorBoard and the report as a user gets them, only the printing off; the solvent mask as
above). Its columns: the iterations each ran, seconds per iteration (RELION: wall / 25;
cryotorch: the median of its iterations after the first), the whole run's wall time, and the
speed-ups per iteration and per whole run.

Each runs in its own process; peak RSS is that process's ``ru_maxrss`` (with ``--device cuda``
also cryotorch's peak GPU memory, ``torch.cuda.max_memory_allocated``, in brackets).
Accuracy: against the true classes, best matching of labels. With ``--seeds S`` each program
runs S times on the same particles, with random seeds 0..S-1 (the initial random assignment of
both): the table gives the median seconds per iteration and wall time, the largest peak RSS,
and the mean accuracy with its range, since after a few iterations the accuracy depends on the
start. Prints a Markdown table (and writes it with ``--output``); "speed-up" is RELION's
seconds per iteration over cryotorch's.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile

from cryotorch.evaluation import classification_accuracy, read_true_classes
from cryotorch.physics.slices import KERNEL_CHOICES
from cryotorch.simulate.atomic import (
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
    write_interpolated_model,
)
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

PIXEL_SIZE = 1.5
# The solvent mask of both programs, whatever the box (AdK is about 60 Å across), and its soft
# edge: RELION's --maskedge, 5 pixels of the particle images.
PARTICLE_DIAMETER = 0.9 * 64 * PIXEL_SIZE
MASK_EDGE = 5 * PIXEL_SIZE
SNR = 0.05

# Runs a command as a child and prints its peak RSS (kB) as the last line.
RSS_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def measured(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """Run ``command``; returns (wall seconds, peak RSS in MB, its stdout)."""
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *command],
        cwd=cwd, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    lines = result.stdout.strip().splitlines()
    return seconds, int(lines[-1]) / 1024, "\n".join(lines[:-1])


def simulate(work: Path, box: int, k: int, n: int, seed: int) -> Path:
    open_, closed = builtin_structures()
    centre = read_model_coordinates(open_).mean(0)
    maps = []
    for i, fraction in enumerate(np.linspace(0, 1, k)):
        model = write_interpolated_model(open_, closed, float(fraction), work / f"model_{i}.pdb")
        maps.append(atomic_model_to_map(model, box, PIXEL_SIZE, 50.0, centre=centre))
    settings = SimulationSettings(n_particles=n, snr=SNR, seed=seed)
    return simulate_particles(np.stack(maps), PIXEL_SIZE, work / "data", settings)


RELION_DEFAULT_ITERATIONS = 25  # relion_refine's --iter default for 3D classification
INITIAL_RESOLUTION = 20.0  # Å: RELION's --ini_high in --defaults, cryotorch's own default


def run_relion(star: Path, k: int, args, seed: int = 0) -> dict:
    """``relion_refine`` at the fixed ``--resolution`` for ``--iterations`` (with
    ``--defaults``: its own resolution, from ``--ini_high 20``, for 25 iterations)."""
    folder = star.parent
    if not (folder / "consensus.mrc").is_file():
        subprocess.run(
            ["relion_reconstruct", "--i", star.name, "--o", "consensus.mrc", "--ctf"],
            cwd=folder, check=True, capture_output=True,
        )  # fmt: skip
    out = f"relion_K{k}" + ("_defaults" if args.defaults else "") + (f"_seed{seed}" if seed else "")
    (folder / out).mkdir(exist_ok=True)
    iterations = RELION_DEFAULT_ITERATIONS if args.defaults else args.iterations
    r = f"{args.resolution:g}"
    resolution = (
        ["--ini_high", f"{INITIAL_RESOLUTION:g}"]
        if args.defaults
        else ["--ini_high", r, "--strict_highres_exp", r]
    )
    command = [
        "relion_refine", "--i", star.name, "--o", f"{out}/run", "--ref", "consensus.mrc",
        "--K", str(k), "--skip_align", "--tau2_fudge", "4", "--iter", str(iterations),
        "--ctf", *resolution, "--flatten_solvent", "--zero_mask",
        "--particle_diameter", f"{PARTICLE_DIAMETER:.1f}", "--pad", "2", "--j",
        str(args.threads), "--random_seed", str(seed), "--dont_combine_weights_via_disc", "--pool", "30",
    ]  # fmt: skip
    wall, rss, _ = measured(command, folder)
    data = starfile.read(folder / out / f"run_it{iterations:03d}_data.star", always_dict=True)
    predicted = data["particles"]["rlnClassNumber"].to_numpy() - 1
    return {
        "s_per_it": wall / iterations,
        "wall": wall,
        "iterations": iterations,
        "rss_mb": rss,
        "predicted": predicted,
    }


def relion_like_command(
    star: Path, out: Path, k: int, iterations: int, resolution: float, seed: int = 0
):
    """``cryotorch-classify experiment=relion_like`` at a fixed ``resolution`` (Å), quiet."""
    return [
        sys.executable, "-m", "cryotorch.cli.classify", f"data.particles={star}",
        f"output_dir={out}", "logger=none", "logger.quiet=true", "experiment=relion_like",
        f"optim.max_iterations={iterations}", f"model.num_classes={k}",
        f"model.target_resolution={resolution}",
        f"model.initial_resolution={resolution}", "model.resolution_reach_at=0", f"seed={seed}",
        f"model.particle_diameter={PARTICLE_DIAMETER:.1f}", f"mask.soft_edge_angstrom={MASK_EDGE}",
    ]  # fmt: skip


def defaults_command(star: Path, out: Path, k: int, seed: int = 0) -> list[str]:
    """``cryotorch-classify`` as a user runs it: its defaults (resolution schedule, online EM,
    stopping rule, TensorBoard and the report), only the printing off, and the benchmark's
    solvent mask."""
    return [
        sys.executable, "-m", "cryotorch.cli.classify", f"data.particles={star}",
        f"output_dir={out}", "logger.quiet=true", f"model.num_classes={k}", f"seed={seed}",
        f"model.particle_diameter={PARTICLE_DIAMETER:.1f}", f"mask.soft_edge_angstrom={MASK_EDGE}",
    ]  # fmt: skip


def run_cryotorch(
    star: Path, k: int, args, kernels: str = "numba", seed: int = 0, variant: str = ""
) -> dict:
    overrides = variant.split()
    tag = "".join(f"_{o.replace('=', '-').replace('.', '-')}" for o in overrides)
    tag += "_defaults" if args.defaults else ""
    out = star.parent / (f"cryotorch_K{k}_{kernels}{tag}" + (f"_seed{seed}" if seed else ""))
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own folder from an earlier run
    if args.defaults:
        command = defaults_command(star, out, k, seed)
    else:
        # RELION's first iteration is the random assignment, cryotorch's initialisation.
        command = relion_like_command(star, out, k, args.iterations - 1, args.resolution, seed)
    command += [f"device={args.device}", f"kernels={kernels}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    wall, rss, stdout = measured(command, star.parent, env)
    gpu = re.search(r"peak GPU memory (\d+) MB", stdout)  # printed on CUDA only
    with open(out / "iterations.csv") as f:
        table = list(csv.DictReader(f))
    # --defaults: every iteration (online EM's too); else the full-batch ones, as RELION's.
    seconds = [float(row["seconds"]) for row in table if args.defaults or row["phase"] == "full"]
    predicted = np.load(out / "posteriors.npy").argmax(1)
    steady = seconds[1:] or seconds  # the first also holds the initialisation
    return {
        "s_per_it": float(np.median(steady)),
        "wall": wall,
        "iterations": len(table),
        "rss_mb": rss,
        "gpu_mb": float(gpu.group(1)) if gpu else None,
        "predicted": predicted,
    }


def summary(runs: list[dict], truth: np.ndarray, k: int) -> dict:
    """One program's runs (one per seed) as a table row: median seconds per iteration and wall
    time, the largest peak RSS, and the accuracy (with its range over the seeds)."""
    accuracy = [100 * classification_accuracy(r["predicted"], truth, k) for r in runs]
    text = f"{accuracy[0]:.2f} %"
    if len(runs) > 1:
        text = f"{np.mean(accuracy):.2f} % ({min(accuracy):.2f}-{max(accuracy):.2f})"
    return {
        "s_per_it": float(np.median([r["s_per_it"] for r in runs])),
        "wall": float(np.median([r["wall"] for r in runs])),
        "iterations": float(np.median([r["iterations"] for r in runs])),
        "rss_mb": max(r["rss_mb"] for r in runs),
        "gpu_mb": max((r["gpu_mb"] for r in runs if r.get("gpu_mb")), default=None),
        "accuracy": text,
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node() or 'host'}: {model}, {os.cpu_count()} cores visible"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--particles", type=int, default=10000)
    ap.add_argument("--iterations", type=int, default=5, help="RELION's count (at least 2)")
    ap.add_argument("--resolution", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--kernels", nargs="+", default=["numba"], choices=KERNEL_CHOICES)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help='cryotorch runs with these Hydra overrides added, one row each ("": none)',
    )
    ap.add_argument("--seeds", type=int, default=1, help="runs per program, seeds 0..S-1")
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="whole runs as a user runs them: cryotorch's defaults against relion_refine's "
        "25 iterations (--iterations and --resolution are then not used)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    if args.iterations < 2:
        ap.error("--iterations counts RELION's random-assignment iteration too: at least 2")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryotorch-benchmark-"))
    rows = []
    header = (
        "| box | K | particles | program | s / iteration | particle·class / s | wall (s) "
        "| peak RSS (MB) | accuracy | speed-up |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    if args.defaults:
        header = (
            "| box | K | particles | program | iterations | s / iteration | wall (s) "
            "| peak RSS (MB) | accuracy | speed-up per iteration | speed-up per run |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|"
        )
    print(header, flush=True)
    for box in args.boxes:
        for k in args.classes:
            case = work / f"box{box}_K{k}"
            case.mkdir(parents=True, exist_ok=True)
            star = case / "data" / "particles.star"
            if not star.is_file():
                star = simulate(case, box, k, args.particles, args.seed)
            truth = read_true_classes(star.parent)
            runs = {}
            for seed in range(args.seeds):
                if not args.no_relion:
                    runs.setdefault("relion_refine", []).append(run_relion(star, k, args, seed))
                for kernels in args.kernels:
                    for variant in args.variants:
                        name = f"cryotorch ({args.device}, {kernels}"
                        name += f"; {variant.strip()})" if variant.strip() else ")"
                        run = run_cryotorch(star, k, args, kernels, seed, variant)
                        runs.setdefault(name, []).append(run)
            results = {name: summary(r, truth, k) for name, r in runs.items()}
            relion = results.get("relion_refine")
            for name, r in results.items():
                speedup = (
                    f"{relion['s_per_it'] / r['s_per_it']:.1f}x"
                    if relion and name != "relion_refine"
                    else ""
                )
                memory = f"{r['rss_mb']:.0f}"
                if r["gpu_mb"] is not None:
                    memory += f" (GPU {r['gpu_mb']:.0f})"
                if args.defaults:
                    whole = (
                        f"{relion['wall'] / r['wall']:.1f}x"
                        if relion and name != "relion_refine"
                        else ""
                    )
                    line = (
                        f"| {box} | {k} | {args.particles} | {name} | {r['iterations']:.0f} | "
                        f"{r['s_per_it']:.2f} | {r['wall']:.0f} | {memory} | {r['accuracy']} | "
                        f"{speedup} | {whole} |"
                    )
                    rows.append(line)
                    print(line, flush=True)
                    continue
                line = (
                    f"| {box} | {k} | {args.particles} | {name} | {r['s_per_it']:.2f} | "
                    f"{args.particles * k / r['s_per_it']:,.0f} | {r['wall']:.0f} | {memory} | "
                    f"{r['accuracy']} | {speedup} |"
                )
                rows.append(line)
                print(line, flush=True)
    runs_were = (
        f"whole runs: cryotorch's defaults (median iterations shown), relion_refine "
        f"--iter {RELION_DEFAULT_ITERATIONS} --ini_high {INITIAL_RESOLUTION:g}"
        if args.defaults
        else f"{args.iterations} iterations (RELION's count: a random assignment, then EM) at "
        f"{args.resolution:g} Å"
    )
    footer = (
        f"\n{datetime.date.today()}, {machine()}; {args.threads} threads; "
        f"{runs_were}; SNR {SNR}, "
        f"{args.seeds} seed(s) per program; "
        f"{PIXEL_SIZE} Å/px. Work folder {work}."
    )
    print(footer)
    if args.output:
        args.output.write_text("\n".join([header, *rows]) + "\n" + footer + "\n")
    (work / "benchmark.json").write_text(json.dumps({"rows": rows, "footer": footer}))


if __name__ == "__main__":
    main()
