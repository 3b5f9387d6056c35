"""Where the accuracy below the oracle goes, on one simulated data set: the resolution limit,
the noise in the class maps, or the optimum EM settles in.

    python scripts/gap_diagnosis.py PARTICLES.star [overrides ...] [--iterations 10]

``PARTICLES.star`` as ``cryotorch-simulate`` (or :mod:`cryotorch.simulate.families`) wrote it;
``overrides`` are cryotorch-classify's (e.g. ``model.regulariser=denoise``;
``model.num_classes`` must be the true number). Prints the accuracy of:

1. the oracle: true maps, true noise and proportions, every shell to Nyquist;
2. the oracle at the E-step's final limit (``model.target_resolution``): what the resolution
   limit alone costs;
3. the plug-in: maps the M-step (the settings' regulariser and mask) makes from the particles'
   true classes, one E-step with the noise it estimates: what noise in the maps costs;
4. EM started there (β = 0, the E-step at its final limit, ``--iterations`` full passes):
   whether the optimum near the truth holds or drifts;
5. with ``--run``: the settings' whole run from their own start, for comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module

from cryotorch.cli.schema import read_run_config
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify
from cryotorch.engine.context import RunContext
from cryotorch.engine.passes import assignment_statistics, estep_pass
from cryotorch.engine.settings import Masks
from cryotorch.engine.start import initial_state
from cryotorch.evaluation import classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_particles
from cryotorch.oracle import oracle_posteriors
from cryotorch.physics.fourier import cropped_box_for_resolution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("particles", type=Path)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--run", action="store_true", help="also the settings' own whole run")
    args = ap.parse_args()
    star = args.particles
    truth = read_true_classes(star.parent)
    k = int(truth.max()) + 1
    with initialize_config_module("cryotorch.configs", version_base="1.3"):
        cfg = compose(
            "classify", [f"data.particles={star}", f"model.num_classes={k}", *args.overrides]
        )
    settings = read_run_config(cfg).settings()
    print(f"1. oracle: {100 * oracle_posteriors(star).accuracy:.2f} %")
    target = settings.model.target_resolution
    limited = oracle_posteriors(star, max_resolution=target).accuracy
    print(f"2. oracle to {target:g} Å: {100 * limited:.2f} %")
    table = read_particles(star)
    with ParticleImages(table) as images:
        d_work, _ = cropped_box_for_resolution(
            images.image_shape[-1], float(table.pixel_size_angstrom[0]), target
        )
        batcher = BatchMaker(images, d_work, torch.device("cpu"), pad=settings.model.pad)
        run = RunContext(batcher, settings, Masks())
        state = initial_state(run, None)
        state.iteration = 10**6  # the schedules' end: β = 0, the E-step at its final limit
        stats = assignment_statistics(run, truth, state.noise)
        state.maps, state.prior, state.noise = run.m_step(stats, state.noise)
        for i in range(args.iterations + 1):
            stats = run.zeros()
            result = estep_pass(run, state, np.arange(run.n), stats=stats)
            accuracy = classification_accuracy(result.gamma.argmax(1).numpy(), truth, k)
            name = "3. plug-in (maps from the true classes)" if i == 0 else f"4. EM pass {i}"
            print(f"{name}: {100 * accuracy:.2f} %", flush=True)
            state.maps, state.prior, state.noise = run.m_step(stats, state.noise)
        if args.run:
            result = classify(batcher, settings)
            accuracy = classification_accuracy(result.posteriors.argmax(1), truth, k)
            print(f"5. the settings' run: {100 * accuracy:.2f} %")


if __name__ == "__main__":
    main()
