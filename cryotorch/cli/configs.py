"""Where the Hydra configs are: the repository's top-level ``configs/`` folder.

cryotorch is installed from its source tree (``pip install -e .``, as scripts/run.sh and
scripts/test.sh do), so the package sits beside ``configs/``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cryotorch.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def job_output_dir(cfg: DictConfig) -> Path:
    """Where this job writes: Hydra's job folder when Hydra runs it (``output_dir`` for a
    single run, ``output_dir/<job number>`` in a ``-m`` sweep), else ``cfg.output_dir``."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.output_dir)


def run_reporting_input_errors(program: str, run: Callable[[DictConfig], object], cfg) -> None:
    """``run(cfg)`` inside a ``@hydra.main`` function: Hydra would report an exception with a
    traceback, so bad input is printed as one line and the process exits with status 2."""
    try:
        run(cfg)
    except InputError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        sys.exit(2)
