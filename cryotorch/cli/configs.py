"""Where the Hydra configs are: the repository's top-level ``configs/`` folder.

cryotorch is installed from its source tree (``pip install -e .``, as scripts/run.sh and
scripts/test.sh do), so the package sits beside ``configs/``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
