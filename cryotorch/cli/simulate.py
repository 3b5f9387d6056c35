"""``cryotorch-simulate``: a RELION particle set with known classes (Hydra-configured).

    cryotorch-simulate maps=[a.mrc,b.mrc] n_particles=N snr=S proportions=[0.5,0.5] \\
        output_dir=DIR seed=S

See ``configs/simulate.yaml`` for every option and :mod:`cryotorch.simulate.particles` for
what is written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from cryotorch.cli.configs import (
    CONFIG_PATH,
    check_command_line,
    job_output_dir,
    run_reporting_input_errors,
    save_job_record,
)
from cryotorch.cli.schema import SimulateConfig, read_simulate_config
from cryotorch.errors import InputError
from cryotorch.io import read_map
from cryotorch.simulate.atomic import (
    atomic_model_to_map,
    builtin_structures,
    read_model_coordinates,
)
from cryotorch.simulate.particles import simulate_particles

__all__ = ["load_class_maps", "main", "run"]

ATOMIC_SUFFIXES = {".pdb", ".ent", ".cif", ".mmcif"}


def _is_atomic_model(path: Path) -> bool:
    """Whether ``path`` names an atomic model (gzipped or not) rather than a map."""
    name = path.name.lower().removesuffix(".gz")
    return Path(name).suffix in ATOMIC_SUFFIXES


def load_class_maps(config: SimulateConfig) -> tuple[np.ndarray, float]:
    """The class maps ``(k, d, d, d)`` and their voxel size (Å) that ``config.maps`` names."""
    paths = [Path(p) for p in config.maps] if config.maps else builtin_structures()
    if all(_is_atomic_model(p) for p in paths):
        first = read_model_coordinates(paths[0])
        reference = read_model_coordinates(paths[0], ca_only=True) if config.superpose else None
        maps = [
            atomic_model_to_map(
                p,
                config.box,
                config.pixel_size,
                config.bfactor,
                centre=first.mean(0),
                superpose_onto=reference if i else None,
            )
            for i, p in enumerate(paths)
        ]
        return np.stack(maps), float(config.pixel_size)
    maps, sizes = zip(*(read_map(p) for p in paths), strict=True)
    for p, m, s in zip(paths, maps, sizes, strict=True):
        if m.shape != maps[0].shape:
            raise InputError(
                p, "header.nx/ny/nz", f"map is {m.shape}, {paths[0]} is {maps[0].shape}"
            )
        if abs(s - sizes[0]) > 1e-3 * sizes[0]:
            raise InputError(
                p, "header.voxel_size", f"voxel size {s:.4f} Å, {paths[0]} has {sizes[0]:.4f} Å"
            )
    return np.stack(maps), float(sizes[0])


def run(cfg: DictConfig, output_dir: Path | None = None) -> Path:
    """Simulate the particle set ``cfg`` describes into ``output_dir`` (default: the job's
    output folder, with the configuration recorded in its ``.hydra/``); return the STAR file's
    path."""
    config = read_simulate_config(cfg)
    maps, pixel_size = load_class_maps(config)
    settings = config.settings()
    t0 = time.perf_counter()
    star = simulate_particles(maps, pixel_size, output_dir or job_output_dir(config), settings)
    if output_dir is None:  # the command's own job, not a simulation inside another program
        save_job_record(job_output_dir(config), config)
    k, d = maps.shape[0], maps.shape[-1]
    print(
        f"simulated {settings.n_particles} particles of {k} classes, box {d}, "
        f"{pixel_size:.3f} Å/px, "
        f"SNR {settings.snr} in {time.perf_counter() - t0:.1f} s -> {star}"
    )
    return star


@hydra.main(config_path=CONFIG_PATH, config_name="simulate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run_reporting_input_errors("cryotorch-simulate", run, cfg)


def main() -> None:
    check_command_line("cryotorch-simulate", "simulate", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
