"""Throughput of central-slice extraction and insertion: cryotorch against torch-fourier-slice.

    python scripts/bench_slices.py [--boxes 64 128] [--classes 1 4] [--batch 512] [--threads 2]
                                   [--device cpu|cuda] [--kernels numba torch compiled]

The cryotorch kernels run three ways: numba (the CPU default), torch (the reference, the CUDA
path) and compiled (that torch code through torch.compile); ``--kernels`` chooses which.

Both libraries work on the same 2x padded Fourier volumes (box p = 2d). cryotorch samples the
box-d image grid (d x (d/2+1) frequencies, |k| <= d/2) at q = 2 Aᵀk; torch-fourier-slice's
low-level functions return slices of the volume's own grid (p x (p/2+1)), which its
``project_3d_to_2d(pad_factor=2)`` then crops in real space. Its full projection is timed as well,
next to ``cryotorch.physics.projector.project``. torch-fourier-slice's insertion returns the
interpolation weights (counts) beside the data; cryotorch's inserts given weights (CTF²), adding
into running sums as the M-step does. For K > 1 the row "numba, K factors" inserts the M-step's
form: one image (and weights) per particle and K per-class factors (the posteriors), in place
of K slices.
For K classes cryotorch does one gather of the interleaved table; torch-fourier-slice uses
its multichannel functions. Figures are
class-slices per second (batch x K / seconds), the median of several repeats. Prints a table.
Compilation (numba's JIT, torch.compile) happens in the untimed warm-up call. The torch rows
materialise every neighbour: at d = 128, K = 4 and the default batch of 512 they take about
20 GB; pass a smaller --batch on a smaller machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from cryotorch.physics.fourier import rfft_3d
from cryotorch.physics.projector import pad_volume, prepare_volumes, project
from cryotorch.physics.slices import (
    KERNEL_CHOICES,
    extract_central_slices,
    insert_central_slices,
    slice_geometry,
)
from cryotorch.simulate.particles import sample_uniform_rotations


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(
    d: int, k: int, batch: int, device: str, repeats: int, kernels: list[str]
) -> list[tuple[str, float]]:
    import numpy as np
    import torch_fourier_slice as tfs

    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(k, d, d, d, generator=gen).to(device)
    rot = torch.as_tensor(
        sample_uniform_rotations(batch, np.random.default_rng(0)), dtype=torch.float32
    ).to(device)
    p = 2 * d
    n_vox = p * p * (p // 2 + 1)
    table = prepare_volumes(maps)
    padded_ft = rfft_3d(pad_volume(maps, 2))  # (k, p, p, p//2+1)
    rot_xyz = rot.transpose(1, 2)  # torch-fourier-slice's matrices act on (x, y, z): RELION's Aᵀ
    slices = torch.randn(batch, k, d, d // 2 + 1, dtype=torch.complex64, generator=gen).to(device)
    weights = torch.rand(batch, k, d, d // 2 + 1, generator=gen).to(device)
    tfs_slices = torch.randn(batch, k, p, p // 2 + 1, dtype=torch.complex64, generator=gen).to(
        device
    )

    def ours_extract(kernels: str):
        extract_central_slices(table, slice_geometry(rot, d, 2, kernels))

    sums = (torch.zeros(n_vox, 2 * k, device=device), torch.zeros(n_vox, k, device=device))

    def ours_insert(kernels: str):  # into running sums, as the M-step accumulates its statistics
        insert_central_slices(slices, slice_geometry(rot, d, 2, kernels), n_vox, weights, out=sums)

    image, image_weights = slices[:, :1], weights[:, :1]
    factors = (torch.rand(batch, k, generator=gen), torch.rand(batch, k, generator=gen))
    factors = tuple(f.to(device) for f in factors)

    def ours_insert_factored():  # the M-step's form: one image per particle, K posteriors
        geometry = slice_geometry(rot, d, 2, "numba")
        insert_central_slices(image, geometry, n_vox, image_weights, out=sums, factors=factors)

    def ours_project():
        project(maps, rot)

    if k == 1:

        def tfs_extract():
            tfs.extract_central_slices_rfft_3d(padded_ft[0], rot_xyz)

        def tfs_insert():
            tfs.insert_central_slices_rfft_3d(tfs_slices[:, 0], (p, p, p), rot_xyz)

        def tfs_project():
            tfs.project_3d_to_2d(maps[0], rot_xyz, pad_factor=2.0)
    else:

        def tfs_extract():
            tfs.extract_central_slices_rfft_3d_multichannel(padded_ft, rot_xyz)

        def tfs_insert():
            tfs.insert_central_slices_rfft_3d_multichannel(tfs_slices, (p, p, p), rot_xyz)

        def tfs_project():
            tfs.project_3d_to_2d_multichannel(maps, rot_xyz, pad_factor=2.0)

    cases = [
        *((f"extract  cryotorch {kind}", partial(ours_extract, kind)) for kind in kernels),
        ("extract  torch-fourier-slice", tfs_extract),
        *((f"insert   cryotorch {kind}", partial(ours_insert, kind)) for kind in kernels),
        *(
            [("insert   cryotorch numba, K factors", ours_insert_factored)]
            if k > 1 and "numba" in kernels
            else []
        ),
        ("insert   torch-fourier-slice", tfs_insert),
        # the default kernels: numba on the CPU, the torch code on CUDA
        (f"project  cryotorch {'torch' if device == 'cuda' else 'numba'}", ours_project),
        ("project  torch-fourier-slice", tfs_project),
    ]
    rows = []
    for name, fn in cases:
        try:  # numba's JIT / torch.compile run in timed()'s warm-up call
            seconds = timed(fn, repeats, device)
            rows.append((name, batch * k / seconds))
        except Exception as exc:  # report, do not hide, a failing baseline
            print(f"{name}: failed ({type(exc).__name__}: {exc})")
            rows.append((name, float("nan")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--classes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch", type=int, default=512, help="as optim.batch_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--kernels", nargs="+", default=list(KERNEL_CHOICES), choices=KERNEL_CHOICES,
        help="cryotorch's kernels to time (all three by default)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}"
    )
    print(f"{'d':>4} {'K':>3}  {'operation':32s} {'class-slices/s':>15}")
    for d in args.boxes:
        for k in args.classes:
            for name, rate in bench(d, k, args.batch, args.device, args.repeats, args.kernels):
                print(f"{d:4d} {k:3d}  {name:32s} {rate:15.0f}")


if __name__ == "__main__":
    main()
