"""Same seeds, same results? A digest of every output of a matrix of small runs, to compare
two checkouts of cryotorch before and after a change that should not change any result
(a refactoring): run it in each, then compare the two digests.

    python scripts/same_seed_digest.py /tmp/before    # in the old checkout
    python scripts/same_seed_digest.py /tmp/after     # in the new one
    python scripts/same_seed_digest.py --compare /tmp/before /tmp/after

Each run (600 particles of adenylate kinase with and without a small ligand, box 32, 3 Å,
SNR 0.05, 6 full iterations) covers one kind of run the options offer: every preset, the PCA
start with the FSC filter, the denoiser with optimal contrast, gradient training (with and
without trained noise), focus masks (with and without a given reference), re-seeding,
auto-tuned similarity, the torch kernels and prefetching. The digest hashes the class maps,
both posteriors, ``particles.star`` (stack paths made relative) and ``iterations.csv``
without its ``seconds`` column. Same machine and number of threads for both runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_module

from cryotorch.cli.classify import run
from cryotorch.simulate.examples import small_ligand_set

BASE = ["logger=none", "optim.max_iterations=6", "model.resolution_reach_at=4"]
BASE += ["optim.batch_per_class=100"]  # online EM in mini-batches of 200 particles


def cases(work: Path) -> dict[str, list[str]]:
    focus, consensus = work / "focus.mrc", work / "consensus.mrc"
    return {
        "default": [],
        "hard_after_anneal": ["experiment=hard_after_anneal"],
        "hard_first_then_soft": ["experiment=hard_first_then_soft"],
        "cryosparc_like": ["experiment=cryosparc_like"],
        "relion_like": ["experiment=relion_like"],
        "pca_fsc": ["model.init=pca", "model.regulariser=fsc"],
        "denoise_optimal": ["model.regulariser=denoise", "model.contrast=optimal"],
        "gradient": ["optim=gradient", "optim.gradient.epochs=3"],
        "gradient_noise": [
            "optim=gradient",
            "optim.gradient.epochs=3",
            "optim.gradient.train_noise=true",
            "optim.gradient.train_prior=false",
        ],
        "focus": [f"mask.focus={focus}"],
        "focus_reference": [f"mask.focus={focus}", f"data.reference={consensus}"],
        "reseed_k3": ["model.num_classes=3", "model.reseed=2"],
        "autotune": ["posterior.similarity.auto_tune=true"],
        "torch_kernels": ["kernels=torch"],
        "prefetch": ["optim.prefetch=true", "optim.batch_size=100"],
    }


def digest_of(folder: Path, work: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of each result file of the run in ``folder``."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in (".npy", ".mrc"):
            data = path.read_bytes()
        elif path.name == "particles.star":
            data = path.read_text().replace(str(work), "WORK").encode()
        elif path.name == "iterations.csv":
            table = pd.read_csv(path).drop(columns=["seconds"])
            data = table.to_csv(index=False).encode()
        else:
            continue
        out[path.name] = hashlib.sha256(data).hexdigest()[:16]
    return out


def make_digest(out: Path) -> None:
    torch.set_num_threads(2)
    work = out / "data"
    star, _, _ = small_ligand_set(work, 600, 0.05, 0.2, 32, 3.0, seed=3)
    digest = {}
    for name, overrides in cases(work).items():
        with initialize_config_module("cryotorch.configs", version_base="1.3"):
            cfg = compose(
                "classify",
                [f"data.particles={star}", f"output_dir={out / name}", *BASE, *overrides],
            )
        run(cfg)
        digest[name] = digest_of(out / name, work)
    (out / "digest.json").write_text(json.dumps(digest, indent=1))
    print(f"{len(digest)} runs, digest in {out / 'digest.json'}")


def compare(before: Path, after: Path) -> int:
    a = json.loads((before / "digest.json").read_text())
    b = json.loads((after / "digest.json").read_text())
    differ = 0
    for name in sorted(set(a) | set(b)):
        files = sorted(f for f in set(a.get(name, {})) | set(b.get(name, {})) if
                       a.get(name, {}).get(f) != b.get(name, {}).get(f))  # fmt: skip
        differ += bool(files)
        print(f"{name:22s} {'same' if not files else 'DIFFERENT: ' + ', '.join(files)}")
    print(f"{len(set(a) | set(b)) - differ} of {len(set(a) | set(b))} runs the same")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--compare", action="store_true", help="compare two digests")
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(compare(*args.folders))
    make_digest(args.folders[0])
