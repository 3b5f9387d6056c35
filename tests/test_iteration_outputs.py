"""Per-iteration results as RELION users know them (issue 22): ``iterations/it007_model.star``
every iteration, the class maps of every iteration on request, and the last iteration's
``model.star`` beside the class maps."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from tests.run_helpers import run_classify, simulate_two_blob_classes

QUICK = ["logger=none", "logger.quiet=true", "model.target_resolution=12",
         "model.initial_resolution=18", "model.resolution_reach_at=2", "optim.online_epochs=1",
         "optim.batch_per_class=100", "optim.max_iterations=3"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 300 particles (box 24) with every iteration's maps kept."""
    folder = tmp_path_factory.mktemp("iterations")
    star = simulate_two_blob_classes(folder / "data", 300, 0.5, seed=2)
    run_classify(star, folder / "run", *QUICK, "outputs.iteration_maps=true")
    return folder / "run"


def rows(out: Path) -> list[dict]:
    with open(out / "iterations.csv") as f:
        return list(csv.DictReader(f))


def test_every_iteration_has_its_class_table_and_maps(run: Path):
    """One it{i:03d}_model.star per row of iterations.csv, holding that row's values (class
    priors summing to 1, the row's class fractions and resolution) and naming its maps, which
    are at the particles' box; the last iteration's maps are the run's class maps."""
    table = rows(run)
    assert len(table) == 2 + 3  # 2 online steps (300 particles, 200 a batch), 3 full passes
    for row in table:
        i = int(row["iteration"])
        blocks = starfile.read(run / "iterations" / f"it{i:03d}_model.star", always_dict=True)
        general, classes = blocks["model_general"], blocks["model_classes"]
        assert general["rlnCryotorchIteration"] == i and general["rlnOriginalImageSize"] == 24
        assert general["rlnCurrentResolution"] == pytest.approx(float(row["resolution"]))
        assert general["rlnCryotorchMeanEStepESS"] == pytest.approx(float(row["mean_estep_ess"]))
        assert classes["rlnClassDistribution"].sum() == pytest.approx(1, abs=1e-5)
        fractions = [float(row[f"class_{k:03d}_fraction"]) for k in (1, 2)]
        np.testing.assert_allclose(classes["rlnCryotorchClassFraction"], fractions, atol=1e-6)
        names = list(classes["rlnReferenceImage"])
        assert names == [f"it{i:03d}_class001.mrc", f"it{i:03d}_class002.mrc"]
        for name in names:
            with mrcfile.open(run / "iterations" / name) as m:
                assert m.data.shape == (24, 24, 24)
    last = int(table[-1]["iteration"])
    for k in (1, 2):
        with mrcfile.open(run / "iterations" / f"it{last:03d}_class{k:03d}.mrc") as a:
            with mrcfile.open(run / f"class_{k:03d}.mrc") as b:
                np.testing.assert_array_equal(a.data, b.data)


def test_the_run_ends_with_a_model_star_beside_its_maps(run: Path):
    final = starfile.read(run / "model.star", always_dict=True)
    last = starfile.read(run / "iterations" / "it004_model.star", always_dict=True)
    assert final["model_general"] == last["model_general"]
    assert list(final["model_classes"]["rlnReferenceImage"]) == ["class_001.mrc", "class_002.mrc"]
    np.testing.assert_allclose(
        final["model_classes"]["rlnClassDistribution"],
        last["model_classes"]["rlnClassDistribution"],
        atol=1e-6,
    )


@pytest.mark.relion
def test_relion_reads_the_class_table(run: Path):
    """relion_star_printtable (RELION's own STAR reader) lists the class maps and priors."""
    command = ["relion_star_printtable", "model.star", "data_model_classes"]
    columns = ["rlnReferenceImage", "rlnClassDistribution"]
    done = subprocess.run([*command, *columns], cwd=run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    assert printed[0::2] == ["class_001.mrc", "class_002.mrc"]
    assert sum(float(p) for p in printed[1::2]) == pytest.approx(1, abs=1e-5)


def test_without_iteration_maps_only_the_tables_are_kept(tmp_path: Path):
    star = simulate_two_blob_classes(tmp_path / "data", 300, 0.5, seed=2)
    run_classify(star, tmp_path / "run", *QUICK)
    kept = sorted(p.name for p in (tmp_path / "run" / "iterations").iterdir())
    assert kept == [f"it{i:03d}_model.star" for i in range(5)]
    classes = starfile.read(tmp_path / "run" / "iterations" / "it004_model.star")["model_classes"]
    assert "rlnReferenceImage" not in classes
