"""The hard families (:mod:`cryotorch.simulate.families`) classified by relion_refine and by
cryotorch-classify, each beside the oracle (the Bayes-optimal assignment with the true maps,
noise and proportions: :mod:`cryotorch.oracle`).

    python scripts/hard_families.py [--families ligand_3pct ladder_5 ...] [--seeds 3]
        [--first-seed 1] [--methods "defaults=" "denoise=model.regulariser=denoise" ...]
        [--no-relion] [--iterations 25] [--threads 2] [--workdir DIR] [--output table.md]

Per family and data seed (the simulator's seed: each seed is another data set) it simulates the
particles, computes the oracle, runs ``relion_refine --K k --skip_align`` (25 iterations from
the consensus reconstruction, ``--particle_diameter 70``: see
``scripts/compare_relion_classify.py``) and, for every ``--methods`` entry ``name=overrides``
(space-free Hydra overrides joined by ``,,``; ``{data}`` is the particles' folder, where
``consensus.mrc`` lies once RELION has run), ``cryotorch-classify data.particles=...
model.num_classes=k model.particle_diameter=70`` plus the overrides, as a user runs it (its own
process). Every result is kept in ``workdir/results.jsonl`` (a rerun with the same workdir only
runs what is missing). Prints a Markdown table: per family the oracle and per method the final
accuracy (mean over the data sets and their range), the gap to the oracle, iterations and wall
time. Where more classes are asked for than are present, accuracy is after merging each class
into the true class most of its particles are in (:func:`cryotorch.evaluation.merged_accuracy`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile

from cryotorch.evaluation import classification_accuracy, merged_accuracy, read_true_classes
from cryotorch.oracle import oracle_posteriors
from cryotorch.simulate.families import FAMILIES, PARTICLE_DIAMETER, Family, simulate_family

sys.path.insert(0, str(Path(__file__).parent))
from compare_relion_classify import run_relion

DEFAULT_METHODS = ["defaults="]


def score(family: Family, classes: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy of ``classes`` (0-based): one-to-one matching, or merged when the family asks
    for more classes than it holds."""
    if family.classes_asked > family.true_classes:
        return merged_accuracy(classes, truth)
    return classification_accuracy(classes, truth, family.classes_asked)


def run_cryotorch(
    star: Path, family: Family, overrides: list[str], out: Path, threads: int
) -> dict:
    """``cryotorch-classify`` in its own process; its final classes, iterations and wall time."""
    diameter = [f"model.particle_diameter={PARTICLE_DIAMETER}"]
    if any(o.startswith("model.particle_diameter=") for o in overrides):
        diameter = []  # the method's own
    command = [
        "cryotorch-classify", f"data.particles={star}", f"model.num_classes={family.classes_asked}",
        *diameter, f"output_dir={out}", "logger=none", "logger.quiet=true", *overrides,
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    table = starfile.read(out / "particles.star", always_dict=True)["particles"]
    iterations = len(list((out / "iterations").glob("it*_model.star")))
    return {
        "classes": table["rlnClassNumber"].to_numpy() - 1,
        "seconds": seconds,
        "iterations": iterations,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--iterations", type=int, default=25, help="relion_refine's iterations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryotorch-families-"))
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.jsonl"
    results: dict[tuple[str, int, str], dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            results[(r["family"], r["seed"], r["method"])] = r

    def record(family: str, seed: int, method: str, **values: object) -> None:
        row = {"family": family, "seed": seed, "method": method, **values}
        results[(family, seed, method)] = row
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    methods = dict(m.split("=", 1) for m in args.methods)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for name in args.families:
        family = FAMILIES[name]
        for seed in seeds:
            folder = work / name / f"seed_{seed}"
            star = folder / "data" / "particles.star"
            if not star.exists():
                star = simulate_family(family, folder, seed)
            truth = read_true_classes(star.parent)
            if (name, seed, "oracle") not in results:
                record(name, seed, "oracle", accuracy=oracle_posteriors(star).accuracy)
            if not args.no_relion and (name, seed, "relion_refine") not in results:
                r = run_relion(
                    star, truth, args.iterations, args.threads, PARTICLE_DIAMETER,
                    k=family.classes_asked,
                )  # fmt: skip
                record(
                    name, seed, "relion_refine", accuracy=score(family, r["classes"], truth),
                    seconds=r["seconds"], iterations=args.iterations,
                )  # fmt: skip
            for method, joined in methods.items():
                if (name, seed, method) in results:
                    continue
                overrides = [o.replace("{data}", str(star.parent)) for o in joined.split(",,") if o]
                out = folder / f"cryotorch_{method}"
                shutil.rmtree(out, ignore_errors=True)  # a run cut off before it recorded
                r = run_cryotorch(star, family, overrides, out, args.threads)
                record(
                    name, seed, method, accuracy=score(family, r["classes"], truth),
                    seconds=r["seconds"], iterations=r["iterations"],
                )  # fmt: skip
    table = format_table(args.families, list(seeds), ["relion_refine", *methods], results)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    print(f"(work folder {work})")


def format_table(families: list[str], seeds: list[int], methods: list[str], results: dict) -> str:
    """Markdown: per family the oracle, then per method accuracy (mean, range), the gap to
    the oracle (mean, range of the per-set gaps), iterations and wall seconds (medians)."""
    lines = [
        "| data | method | accuracy | below the oracle (points) | iterations | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in families:
        oracle = np.array([results[(name, s, "oracle")]["accuracy"] for s in seeds]) * 100
        lines.append(
            f"| {name}: {FAMILIES[name].description} | oracle | {_spread(oracle)} | - | - | - |"
        )
        for method in methods:
            rows = [results.get((name, s, method)) for s in seeds]
            if any(r is None for r in rows):
                continue
            acc = np.array([r["accuracy"] for r in rows]) * 100
            gaps = oracle - acc
            its = float(np.median([r["iterations"] for r in rows]))
            wall = float(np.median([r["seconds"] for r in rows]))
            lines.append(
                f"| | {method} | {_spread(acc)} | {_spread(gaps, unit='')} | {its:g} | {wall:.0f} |"
            )
    return "\n".join(lines)


def _spread(values: np.ndarray, unit: str = " %") -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}{unit}"
    return f"{values.mean():.2f}{unit} ({values.min():.2f} to {values.max():.2f})"


if __name__ == "__main__":
    main()
