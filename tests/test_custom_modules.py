"""A user's own regulariser or posterior layer chosen from the configuration, made by Hydra's
``instantiate`` (``custom.*``, issue 22), as a user types it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotorch.cli import classify as classify_cli
from cryotorch.io import read_map
from tests import custom_modules
from tests.run_helpers import simulate_two_blob_classes

QUICK = ["logger=none", "logger.quiet=true", "model.target_resolution=12",
         "model.initial_resolution=18", "model.resolution_reach_at=2", "optim.online_epochs=1",
         "optim.batch_per_class=100", "optim.max_iterations=3"]  # fmt: skip


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_two_blob_classes(tmp_path_factory.mktemp("data"), 300, 0.5, seed=5)


def classify(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["cryotorch-classify", *args]
    try:
        classify_cli.main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv


def test_a_users_regulariser_is_the_one_the_m_step_uses(star: Path, tmp_path: Path):
    """RELION's τ² prior made as a user's class (counting its calls) gives the run of the
    default regulariser, bit for bit, and is called at every M-step."""
    common = [f"data.particles={star}", *QUICK]
    assert classify(*common, f"output_dir={tmp_path / 'default'}") == 0
    custom_modules.CALLS["regulariser"] = 0
    target = "{_target_: tests.custom_modules.CountedTauSquared, tau2_fudge: 4.0}"
    assert classify(*common, f"output_dir={tmp_path / 'mine'}", f"custom.regulariser={target}") == 0
    assert custom_modules.CALLS["regulariser"] >= 2 + 3  # online steps and full passes
    for name in ("posteriors.npy", "posteriors_estep.npy"):
        mine, default = (np.load(tmp_path / d / name) for d in ("mine", "default"))
        np.testing.assert_array_equal(mine, default)


def test_a_users_similarity_layer_replaces_class_similarity(star: Path, tmp_path: Path):
    """A layer that spreads every particle evenly: the posteriors the M-step used are all
    1/K, so every class is reconstructed from the same weights, the class maps are the same
    and the E-step cannot tell them apart either."""
    out = tmp_path / "run"
    layer = "{_target_: tests.custom_modules.Uniform, floor: 0.1}"
    args = [f"data.particles={star}", f"output_dir={out}", *QUICK]
    assert classify(*args, f"custom.similarity_layer={layer}") == 0
    np.testing.assert_allclose(np.load(out / "posteriors.npy"), 0.5, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "posteriors_estep.npy"), 0.5, atol=1e-5)
    first, second = (read_map(out / f"class_00{k}.mrc")[0] for k in (1, 2))
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6 * np.abs(first).max())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("custom.regulariser={_target_: mylab.NoSuchPrior}",
         r"custom\.regulariser: cannot make mylab\.NoSuchPrior: "),
        ("custom.regulariser={_target_: torch.nn.Identity}",
         r"custom\.regulariser: Identity is not a cryotorch\.Regulariser subclass"),
        ("custom.regulariser={_target_: tests.custom_modules.CountedTauSquared, strength: 2}",
         r"custom\.regulariser: cannot make tests\.custom_modules\.CountedTauSquared: .*strength"),
        ("custom.similarity_layer={_target_: torch.nn.Identity}",
         r"custom\.similarity_layer: layer\(scores \(4, 2\), beta=0\.5\) raised TypeError"),
        ("custom.similarity_layer={_target_: tests.custom_modules.NotProbabilities}",
         r"custom\.similarity_layer: .* must give \(4, 2\) probabilities that sum to 1 per row"),
        ("custom.similarity_layer=tests.custom_modules.Uniform",
         r"custom\.similarity_layer: expected \{_target_: module\.Class, \.\.\.arguments\}"),
    ],
)  # fmt: skip
def test_a_module_that_cannot_be_made_or_used_is_refused_in_one_line(
    star: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], override: str, message: str
):
    out = tmp_path / "run"
    code = classify(f"data.particles={star}", f"output_dir={out}", *QUICK, override)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(message, err[0]), err[0]
    assert not out.exists()
