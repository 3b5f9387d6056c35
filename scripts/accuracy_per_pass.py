"""Accuracy after each scoring pass, RELION against cryotorch, from a benchmark's work folder.

    python scripts/accuracy_per_pass.py WORKDIR [--output passes.md]

Reads what ``scripts/benchmark.py --workdir WORKDIR`` left in ``box{B}_K{K}/data/``: RELION's
``relion_K{K}[_seed{S}]/run_it{NNN}_data.star`` (iteration 0 is the input, 1 its random
assignment, so iteration ``n + 1`` is its ``n``-th scoring pass) and cryotorch's
``cryotorch_K{K}_{kernels}[_{overrides}][_seed{S}]/iterations.csv`` (the ``accuracy_percent`` of
each full EM iteration ``n``, its ``n``-th pass). Prints, per case and program, the mean
accuracy over the seeds after each pass, and how many seeds ended within 1 point of the best
final accuracy of any run of that case. Accuracy: against ``true_classes.txt``, best matching
of labels (:func:`cryotorch.classification_accuracy`).

Whether a difference after the last pass is more than seed-to-seed luck: each cryotorch row
also gives its difference from RELION's mean ± the standard error of that difference (Welch),
and the two-sided Mann-Whitney p-value of the two sets of final accuracies (rank-based, so one
seed stuck in a local optimum does not dominate it). Needs scipy (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np
import starfile
from scipy.stats import mannwhitneyu

from cryotorch.evaluation import classification_accuracy, read_true_classes


def relion_passes(run: Path, truth: np.ndarray, k: int) -> list[float]:
    """Accuracy (%) after each of RELION's scoring passes (its iterations 2, 3, ...)."""
    files = sorted(run.glob("run_it[0-9][0-9][0-9]_data.star"))
    accuracy = []
    # run_it000: the input; run_it001: the random assignment
    for path in (f for f in files if int(f.name[6:9]) >= 2):
        table = starfile.read(path, always_dict=True)["particles"]
        predicted = table["rlnClassNumber"].to_numpy() - 1
        accuracy.append(100 * classification_accuracy(predicted, truth, k))
    return accuracy


def cryotorch_passes(run: Path) -> list[float]:
    """``accuracy_percent`` of each full EM iteration in ``iterations.csv`` (none yet: [])."""
    if not (run / "iterations.csv").exists():
        return []  # a run still going, or one that failed before its first iteration
    with open(run / "iterations.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["phase"] == "full"]
    if rows and "accuracy_percent" not in rows[0]:
        raise SystemExit(f"{run}/iterations.csv has no accuracy_percent: a run before 2026-11-29")
    return [float(row["accuracy_percent"]) for row in rows]


def program_of(name: str) -> str | None:
    """The table's program name of a run folder, without its seed; None if not a run."""
    name = re.sub(r"_seed\d+$", "", name)
    if re.fullmatch(r"relion_K\d+", name):
        return "relion_refine"
    match = re.fullmatch(r"cryotorch_K\d+_([a-z]+)(.*)", name)
    if match is None:
        return None
    kernels, tag = match.groups()
    return f"cryotorch ({kernels}{'; ' + tag.strip('_') if tag else ''})"


def against(final: np.ndarray, reference: np.ndarray) -> str:
    """``Δ ± s.e. (p = …)``: mean of ``final`` minus mean of ``reference`` (accuracies after the
    last pass, one per seed), the Welch standard error of that difference and the two-sided
    Mann-Whitney p-value; empty with fewer than 2 seeds on either side."""
    if len(final) < 2 or len(reference) < 2:
        return ""
    delta = final.mean() - reference.mean()
    se = np.sqrt(final.var(ddof=1) / len(final) + reference.var(ddof=1) / len(reference))
    p = mannwhitneyu(final, reference, alternative="two-sided").pvalue
    return f"{delta:+.1f} ± {se:.1f} (p = {p:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    cases = sorted(
        args.workdir.glob("box*_K*/data"),
        key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.parent.name)),
    )
    lines = []
    for data in cases:
        box, k = (int(x) for x in re.findall(r"\d+", data.parent.name))
        truth = read_true_classes(data)
        runs: dict[str, list[list[float]]] = {}
        for run in sorted(p for p in data.iterdir() if p.is_dir()):
            program = program_of(run.name)
            if program is None:
                continue
            if program == "relion_refine":
                passes = relion_passes(run, truth, k)
            else:
                passes = cryotorch_passes(run)
            if passes:
                runs.setdefault(program, []).append(passes)
        if not runs:
            continue
        n = min(len(p) for seeds in runs.values() for p in seeds)
        best = max(p[n - 1] for seeds in runs.values() for p in seeds)
        lines += [
            f"\nbox {box}, K = {k}: mean accuracy (%) over the seeds after each scoring pass",
            "",
            "| program | seeds | "
            + " | ".join(f"{i + 1}" for i in range(n))
            + f" | near best | pass {n} vs RELION |",
            "|---|---|" + "---|" * n + "---|---|",
        ]
        reference = np.array([p[n - 1] for p in runs.get("relion_refine", [])])
        for program, seeds in runs.items():
            mean = np.mean([p[:n] for p in seeds], axis=0)
            final = np.array([p[n - 1] for p in seeds])
            near = sum(final >= best - 1)
            versus = "" if program == "relion_refine" else against(final, reference)
            lines.append(
                f"| {program} | {len(seeds)} | "
                + " | ".join(f"{a:.1f}" for a in mean)
                + f" | {near}/{len(seeds)} | {versus} |"
            )
    text = "\n".join(lines).lstrip("\n")
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
