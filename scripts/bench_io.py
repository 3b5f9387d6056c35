"""Benchmark of the particle formats: load a large STAR, read random images from a large stack.

    python scripts/bench_io.py [--rows 200000] [--stack-images 200000] [--box 128]
                               [--reads 10000] [--batch 1000] [--workdir /tmp/cryotorch-bench]

Each measurement runs in a fresh subprocess and reports wall time and memory: the peak
resident set (VmHWM, which counts the stack pages the memory map touched) and the anonymous
memory (RssAnon, what the process itself holds) at the end. With the defaults the stack is
200k images of 128² float32, 13 GB, written once and reused. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text().splitlines()
    values = {line.split(":")[0]: int(line.split()[1]) for line in status if line.endswith("kB")}
    return {"VmHWM": values["VmHWM"], "RssAnon": values["RssAnon"]}


def make_star(path: Path, rows: int) -> None:
    import pandas as pd
    import starfile

    rng = np.random.default_rng(0)
    particles = pd.DataFrame(
        {
            "rlnImageName": [
                f"{i % 100 + 1:06d}@Particles/mic_{i // 100:05d}.mrcs" for i in range(rows)
            ],
            "rlnAngleRot": rng.uniform(-180, 180, rows),
            "rlnAngleTilt": rng.uniform(0, 180, rows),
            "rlnAnglePsi": rng.uniform(-180, 180, rows),
            "rlnOriginXAngst": rng.normal(size=rows),
            "rlnOriginYAngst": rng.normal(size=rows),
            "rlnDefocusU": rng.uniform(5000, 30000, rows),
            "rlnDefocusV": rng.uniform(5000, 30000, rows),
            "rlnDefocusAngle": rng.uniform(-180, 180, rows),
            "rlnOpticsGroup": rng.integers(1, 3, rows),
            "rlnMicrographName": [f"mic_{i // 100:05d}.mrc" for i in range(rows)],
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["g1", "g2"],
            "rlnOpticsGroup": [1, 2],
            "rlnImagePixelSize": [1.1, 1.1],
            "rlnImageSize": [128, 128],
            "rlnImageDimensionality": [2, 2],
            "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1],
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path)


def make_stack(path: Path, n: int, box: int) -> None:
    """A stack whose image i has pixel [0, 0] = i (to check reads), written in chunks."""
    import mrcfile

    noise = np.random.default_rng(0).normal(size=(1000, box, box)).astype(np.float32)
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 1.1
        for start in range(0, n, 1000):
            chunk = noise[: min(1000, n - start)].copy()
            chunk[:, 0, 0] = np.arange(start, start + len(chunk))
            mrc.data[start : start + len(chunk)] = chunk
            mrc.flush()


def child_load_star(path: str) -> dict:
    from cryotorch.io import read_particles

    t0 = time.perf_counter()
    table = read_particles(path)
    return {"seconds": time.perf_counter() - t0, "rows": len(table), **memory_kib()}


def child_read_images(stack: str, n_stack: int, reads: int, batch: int) -> dict:
    from cryotorch.io import ParticleImages
    from cryotorch.io.example import write_example_star  # noqa: F401  (import cost outside timing)
    from cryotorch.particles import OpticsGroups, ParticleTable

    rng = np.random.default_rng(1)
    index = rng.choice(n_stack, size=reads, replace=False)
    n = reads
    table = ParticleTable(
        image_path=np.full(n, stack),
        image_index=index,
        rotation=np.tile(np.eye(3), (n, 1, 1)),
        origin_angstrom=np.zeros((n, 2)),
        defocus_u_angstrom=np.full(n, 1e4),
        defocus_v_angstrom=np.full(n, 1e4),
        astigmatism_angle_deg=np.zeros(n),
        phase_shift_deg=np.zeros(n),
        ctf_bfactor=np.zeros(n),
        ctf_scale=np.ones(n),
        optics_group=np.zeros(n, dtype=np.int64),
        random_subset=np.zeros(n, dtype=np.int64),
        optics=OpticsGroups(
            np.array(["g"]),
            np.array([1.1]),
            np.array([0]),
            np.array([300.0]),
            np.array([2.7]),
            np.array([0.1]),
        ),
    )
    t0 = time.perf_counter()
    with ParticleImages(table) as images:
        ok = True
        for start in range(0, n, batch):
            rows = np.arange(start, min(n, start + batch))
            out = images.read(rows)
            ok &= bool(np.array_equal(out[:, 0, 0], index[rows].astype(np.float32)))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images_per_s": n / seconds, "correct": ok, **memory_kib()}


def in_child(function: str, *args: object) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_io; "
    )
    code += f"print(json.dumps(bench_io.{function}(*{args!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--stack-images", type=int, default=200_000)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--reads", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cryotorch-bench"))
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    star = args.workdir / f"particles_{args.rows}.star"
    if not star.exists():
        make_star(star, args.rows)
    stack = args.workdir / f"stack_{args.stack_images}_{args.box}.mrcs"
    if not stack.exists():
        t0 = time.perf_counter()
        make_stack(stack, args.stack_images, args.box)
        print(
            f"wrote {stack} ({stack.stat().st_size / 1e9:.1f} GB) "
            f"in {time.perf_counter() - t0:.0f} s"
        )

    rows = [("load STAR", f"{args.rows} rows", in_child("child_load_star", str(star)))]
    cold = drop_page_cache()
    rows.append(
        (
            "read random images",
            f"{args.reads} of {args.stack_images} ({stack.stat().st_size / 1e9:.1f} GB), "
            f"batches of {args.batch}, {'cold' if cold else 'warm?'} cache",
            in_child("child_read_images", str(stack), args.stack_images, args.reads, args.batch),
        )
    )
    rows.append(
        (
            "read random images",
            "same again, warm cache",
            in_child("child_read_images", str(stack), args.stack_images, args.reads, args.batch),
        )
    )
    print(f"\n{'task':20s} {'size':58s} {'seconds':>8s} {'peak RSS MB':>12s} {'RssAnon MB':>11s}")
    for task, size, r in rows:
        extra = (
            ""
            if "correct" not in r
            else ("  (values checked)" if r["correct"] else "  WRONG VALUES")
        )
        print(
            f"{task:20s} {size:58s} {r['seconds']:8.2f} {r['VmHWM'] / 1024:12.0f} "
            f"{r['RssAnon'] / 1024:11.0f}{extra}"
        )


if __name__ == "__main__":
    main()
