"""Continuing a finished run (``continue_from``, RELION's ``--continue``), as a user types it:
more iterations or another schedule, in place or into a new folder (issue 22)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cryotorch.cli import classify as classify_cli
from tests.run_helpers import simulate_two_blob_classes

# A small run: 1 online step, full passes at a fixed 9 Å (working box 16), no stopping early
# (the continued run must be comparable iteration for iteration).
QUICK = ["optim.online_epochs=0.5", "optim.batch_per_class=150", "model.target_resolution=9",
         "model.initial_resolution=9", "optim.convergence_percent=0", "logger=none"]  # fmt: skip


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_two_blob_classes(tmp_path_factory.mktemp("data"), 600, 0.5, seed=3)


def classify(*args: str) -> tuple[int, str]:
    """``cryotorch-classify *args`` in this process: exit status and standard error."""
    argv = sys.argv
    sys.argv = ["cryotorch-classify", *args]
    try:
        classify_cli.main()
        return 0, ""
    except SystemExit as exc:
        return int(exc.code or 0), ""
    finally:
        sys.argv = argv


def iterations(out: Path) -> list[str]:
    """``iterations.csv`` without its seconds column: what was computed, not how fast."""
    rows = (out / "iterations.csv").read_text().splitlines()
    drop = rows[0].split(",").index("seconds")
    return [",".join(v for i, v in enumerate(row.split(",")) if i != drop) for row in rows]


def test_a_continued_run_ends_as_the_run_given_the_final_settings_at_once(
    star: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """3 full passes, continued in place to 6, is the run of 6 (its first 3 ran to their
    limit, so nothing differs but the limit): same posteriors and table; what changed is
    printed and recorded in .hydra/continued.yaml, the command line in overrides.yaml."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    data = f"data.particles={star}"
    assert classify(data, f"output_dir={whole}", "optim.max_iterations=6", *QUICK)[0] == 0
    assert classify(data, f"output_dir={part}", "optim.max_iterations=3", *QUICK)[0] == 0
    assert len(iterations(part)) == 1 + 1 + 3  # header, online step, full passes
    capfd.readouterr()
    assert classify(f"continue_from={part}", "optim.max_iterations=6")[0] == 0
    out = capfd.readouterr().out
    assert "after iteration 3: optim.max_iterations: 3 -> 6" in out
    assert iterations(part) == iterations(whole)
    for name in ("posteriors.npy", "posteriors_estep.npy"):
        assert np.array_equal(np.load(part / name), np.load(whole / name))
    (entry,) = OmegaConf.to_container(OmegaConf.load(part / ".hydra" / "continued.yaml"))
    assert entry == {
        "from": str(part / "checkpoint.pt"),
        "after_iteration": 3,
        "changed": ["optim.max_iterations: 3 -> 6"],
    }
    overrides = OmegaConf.load(part / ".hydra" / "overrides.yaml")
    assert data in overrides and "optim.max_iterations=6" in overrides
    assert "optim.max_iterations=3" not in overrides


def test_a_run_continued_into_another_folder_leaves_the_first_as_it_was(
    star: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """Continued with force hard on into a new folder: the first run's files are unchanged
    (bytes), the new run has every iteration in its table and hard posteriors."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert classify(f"data.particles={star}", f"output_dir={first}", "optim.max_iterations=2",
                    *QUICK)[0] == 0  # fmt: skip
    before = {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert classify(f"continue_from={first}", f"output_dir={second}", "posterior.hard=always",
                    "optim.max_iterations=4")[0] == 0  # fmt: skip
    assert {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    table = iterations(second)
    assert len(table) == 1 + 1 + 4 and table[: 1 + 1 + 2] == iterations(first)
    posteriors = np.load(second / "posteriors.npy")
    assert set(np.unique(posteriors)) == {0.0, 1.0}  # force hard, from the continuation on
    assert "posterior.hard: 'never' -> 'always'" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.num_classes=3"], r"model\.num_classes: a continued run keeps model\.num_classes"),
        (["optim.max_iterations=2"], r"optim\.max_iterations: the run has done 2 full passes"),
        (["model.target_resolution=6"], r"target_resolution: .* box 16 .*; 6\.0 Å needs box 24"),
        (["model.pad=1"], r"model\.pad: a continued run keeps"),
    ],
)
def test_what_a_continued_run_cannot_change_is_refused_in_one_line(
    star: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], args: list[str], message: str
):
    """Another number of classes, padding or working box, or no iteration left: exit 2, one
    line naming the key, nothing written in the new folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert classify(f"data.particles={star}", f"output_dir={first}", "optim.max_iterations=2",
                    *QUICK)[0] == 0  # fmt: skip
    capfd.readouterr()
    code = classify(f"continue_from={first}", f"output_dir={second}", *args)[0]
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cryotorch-classify: error: ")
    assert re.search(message, err[0]), err[0]
    assert not second.exists()


def test_continuing_a_folder_without_a_run_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    code = classify(f"continue_from={tmp_path / 'nothing'}")[0]
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"cryotorch-classify: error: {tmp_path / 'nothing' / 'checkpoint.pt'}: no such "
        "checkpoint: expected a run's folder to continue"
    ]


def test_resume_with_more_iterations_points_to_continue_from(
    star: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """resume=true is crash recovery: a raised limit is refused, naming continue_from."""
    out = tmp_path / "run"
    args = [f"data.particles={star}", f"output_dir={out}", *QUICK]
    assert classify(*args, "optim.max_iterations=2")[0] == 0
    capfd.readouterr()
    assert classify(*args, "optim.max_iterations=4", "resume=true")[0] == 2
    err = capfd.readouterr().err
    assert "optim.max_iterations was 2, now 4" in err and "continue_from=<its folder>" in err
