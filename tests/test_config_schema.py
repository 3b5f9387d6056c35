"""The configuration's schema (cryotorch/cli/schema.py, cryotorch/engine/settings.py): its
defaults are the YAML files', every key of the YAML files is in it, and a wrong value is
refused as one line naming the key, before anything is written."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from cryotorch.cli.schema import RunConfig, read_run_config
from cryotorch.engine.settings import ClassificationSettings, settings_dict
from cryotorch.errors import InputError


def composed(*overrides: str):
    with initialize_config_module("cryotorch.configs", version_base="1.3"):
        return compose("classify", ["output_dir=out", *overrides])


def test_the_schema_defaults_are_the_yaml_defaults():
    """The dataclasses' defaults, which the Python API uses, are what the YAML files (which the
    command line and the configuration reference use) say, key for key."""
    yaml = OmegaConf.to_container(composed(), resolve=True)
    schema = asdict(RunConfig())
    yaml.pop("output_dir"), schema.pop("output_dir")  # the YAML's is a dated folder
    schema["optim"].pop("gradient")  # in the YAML only with optim=gradient: checked below
    assert yaml == schema
    gradient = OmegaConf.to_container(composed("optim=gradient").optim.gradient)
    assert gradient == asdict(RunConfig().optim.gradient)
    assert settings_dict(read_run_config(composed()).settings()) == settings_dict(
        ClassificationSettings()
    )


@pytest.mark.parametrize(
    "experiment",
    ["cryosparc_like", "fast", "hard_after_anneal", "hard_first_then_soft", "relion_like"],
)
def test_every_preset_fits_the_schema(experiment: str):
    assert isinstance(read_run_config(composed(f"experiment={experiment}")), RunConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_classes=two", r"configuration: model\.num_classes: Value 'two'"),
        ("model.num_classes=0", r"model\.num_classes must be > 0, got 0"),
        ("model.init=kmeans", r"model\.init must be one of random, pca, got 'kmeans'"),
        ("model.regulariser=blush", r"model\.regulariser must be one of tau2, fsc, denoise"),
        ("posterior.hard=sometimes", r"posterior\.hard must be never\|always"),
        ("posterior.similarity.form=linear", r"posterior\.similarity\.form must be one of"),
        ("posterior.similarity.start=2", r"posterior\.similarity\.start must be in \[0, 1\]"),
        ("optim.max_iterations=0", r"optim\.max_iterations must be > 0, got 0"),
        ("optim.batch_size=1.5", r"configuration: optim\.batch_size: Value '1\.5'"),
        ("data.cache_gb=lots", r"configuration: data\.cache_gb: Value 'lots'"),
        ("data.cache_gb=-1", r"data\.cache_gb must be >= 0, got -1"),
        ("device=tpu", r"device must be cpu or cuda, got 'tpu'"),
        ("kernels=fast", r"kernels must be one of numba, torch, compiled, got 'fast'"),
        ("+model.num_clases=3", r"configuration: model\.num_clases: Key 'num_clases' not in"),
    ],
)
def test_a_wrong_value_is_refused_naming_its_key(override: str, message: str):
    with pytest.raises(InputError, match=message):
        read_run_config(composed(override))


def test_gradient_settings_are_checked_too():
    with pytest.raises(InputError, match=r"torch\.optim has no optimiser 'Adamm'"):
        read_run_config(composed("optim=gradient", "optim.gradient.optimizer=Adamm"))
    with pytest.raises(InputError, match=r"model\.regulariser=fsc filters with half-set"):
        read_run_config(composed("optim=gradient", "model.regulariser=fsc"))


def test_the_command_refuses_a_wrong_value_in_one_line(tmp_path: Path):
    out = tmp_path / "run"
    command = "from cryotorch.cli.classify import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", command, f"output_dir={out}", "model.num_classes=two"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryotorch-classify: error: configuration")
    assert "model.num_classes" in lines[0]
    # Hydra itself records the configuration (.hydra/, classify.log) before the run starts;
    # the run writes nothing (that Hydra writes at all is issue 21's).
    assert {p.name for p in out.iterdir()} <= {".hydra", "classify.log"}
