"""Classification accuracy on data simulated from two real conformations (known classes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cryotorch.cli.classify import run
from cryotorch.cli.configs import CONFIG_DIR


@pytest.mark.slow
def test_adenylate_kinase_open_closed_10k_snr_005(tmp_path: Path):
    # Box 64, 1.5 Å/px, SNR 0.05, 10,000 particles, the default (cryoSPARC-like) settings.
    overrides = [
        f"output_dir={tmp_path}",
        "data.simulate.n_particles=10000",
        "logger=none",
        "seed=3",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        summary = run(compose("classify", overrides))
    assert summary["accuracy"] >= 0.99, summary
