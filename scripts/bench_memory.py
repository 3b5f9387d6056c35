"""Peak memory of a classification against the number of particles (the stack is streamed).

    python scripts/bench_memory.py [--particles 20000 200000] [--box 128] [--classes 2]
        [--iterations 1] [--resolution 8] [--threads 2] [--workdir DIR]

It simulates 10,000 particles (the benchmark's data set: adenylate kinase open / closed,
1.5 Å/px, SNR 0.05) once, then for each ``--particles`` N writes one stack of N images by
repeating them (N x box² float32: 13.1 GB for 200k at box 128) and a STAR file for it, and runs
``cryotorch-classify experiment=relion_like`` on it in its own process. Prints a Markdown table
of the stack size, wall time and peak RSS (``ru_maxrss``; the page cache is not in it). The
images repeat, so the accuracy says nothing new; it is printed as a sanity check only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

sys.path.insert(0, str(Path(__file__).parent))
from benchmark import measured, relion_like_command, simulate

from cryotorch.evaluation import classification_accuracy


def tiled_dataset(source: Path, n: int, folder: Path) -> Path:
    """A STAR file and one stack of ``n`` images: the source particles repeated."""
    star = folder / f"particles_{n}.star"
    if star.is_file():
        return star
    blocks = starfile.read(source, always_dict=True)
    particles = blocks["particles"]
    with mrcfile.mmap(source.parent / "particles.mrcs", mode="r") as src:
        images, voxel = src.data, src.voxel_size.copy()
        m, box = images.shape[0], images.shape[-1]
        stack = folder / f"particles_{n}.mrcs"
        with mrcfile.new_mmap(stack, shape=(n, box, box), mrc_mode=2, overwrite=True) as out:
            for start in range(0, n, m):
                count = min(m, n - start)
                out.data[start : start + count] = images[:count]
            out.voxel_size = voxel
    repeats = np.arange(n) % m
    table = particles.iloc[repeats].reset_index(drop=True)
    table["rlnImageName"] = [f"{i + 1:06d}@{stack.name}" for i in range(n)]
    starfile.write({"optics": blocks["optics"], "particles": table}, star, overwrite=True)
    truth = np.loadtxt(source.parent / "true_classes.txt", dtype=np.int64)
    np.savetxt(folder / f"true_classes_{n}.txt", truth[repeats], fmt="%d")
    return star


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--resolution", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryotorch-memory-"))
    source = work / "source" / "data" / "particles.star"
    if not source.is_file():
        source.parent.parent.mkdir(parents=True, exist_ok=True)
        source = simulate(source.parent.parent, args.box, args.classes, 10000, seed=1)
    print("| particles | box | stack (GB) | K | iterations | wall (s) | peak RSS (MB) | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.particles:
        star = tiled_dataset(source, n, work)
        out = work / f"run_{n}"
        command = relion_like_command(star, out, args.classes, args.iterations, args.resolution)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        shutil.rmtree(out, ignore_errors=True)  # this script's own folder from an earlier run
        wall, rss, _ = measured(command, work, env)
        truth = np.loadtxt(work / f"true_classes_{n}.txt", dtype=np.int64) - 1
        predicted = pd.Series(np.load(out / "posteriors.npy").argmax(1))
        accuracy = classification_accuracy(predicted.to_numpy(), truth, args.classes)
        size_gb = (star.parent / f"particles_{n}.mrcs").stat().st_size / 1e9
        print(
            f"| {n} | {args.box} | {size_gb:.1f} | {args.classes} | {args.iterations} | "
            f"{wall:.0f} | {rss:.0f} | {100 * accuracy:.2f} % |",
            flush=True,
        )


if __name__ == "__main__":
    main()
