"""The research API guide's one-EM-iteration-by-hand block runs as written and works."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

import cryotorch as ct
from tests.run_helpers import simulate_two_blob_classes

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "research-api.md"


def guide_block() -> str:
    text = GUIDE.read_text()
    match = re.search(r"<!-- research-api[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{GUIDE} has no research-api block"
    return match.group(1)


def test_the_guides_em_iteration_runs_and_classifies(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path, 600, 0.1, seed=3)
    assert star == tmp_path / "particles.star"  # the block reads the files by these names
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(guide_block(), str(GUIDE), "exec"), scope)
    finally:
        os.chdir(here)
    truth = np.loadtxt(tmp_path / "true_classes.txt", dtype=np.int64) - 1
    posteriors = torch.cat(scope["posteriors"]).numpy()
    np.testing.assert_allclose(posteriors.sum(1), 1, atol=1e-5)
    assert ct.classification_accuracy(posteriors.argmax(1), truth, 2) >= 0.95
    # The new maps are the two classes again: each correlates best with its own true map.
    new, true = (
        scope["maps"],
        torch.stack(
            [torch.from_numpy(ct.read_map(tmp_path / f"class_00{k}.mrc")[0]) for k in (1, 2)]
        ),
    )
    corr = torch.corrcoef(torch.cat([new.reshape(2, -1), true.reshape(2, -1)]))[:2, 2:]
    own, other = corr.diagonal(), corr.flip(1).diagonal()
    assert bool((own > 0.8).all()) and bool((own > other + 0.1).all()), corr
