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

from cryotorch.cli.schema import RunConfig, SimulateConfig, read_run_config, read_simulate_config
from cryotorch.engine.settings import ClassificationSettings, settings_dict
from cryotorch.errors import InputError
from cryotorch.simulate.particles import SimulationSettings


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
        ("model.symmetry=C0", r"model\.symmetry must be C<n> or D<n> \(n >= 1\), T, O, I"),
        ("model.symmetry=D6h", r"model\.symmetry must be .* as RELION's --sym, got 'D6h'"),
        ("posterior.hard=sometimes", r"posterior\.hard must be never\|always"),
        ("posterior.similarity.form=linear", r"posterior\.similarity\.form must be one of"),
        ("posterior.similarity.start=2", r"posterior\.similarity\.start must be in \[0, 1\]"),
        ("optim.max_iterations=0", r"optim\.max_iterations must be > 0, got 0"),
        ("optim.batch_size=1.5", r"configuration: optim\.batch_size: Value '1\.5'"),
        ("data.cache_gb=lots", r"configuration: data\.cache_gb: Value 'lots'"),
        ("data.cache_gb=-1", r"data\.cache_gb must be in \[0, 1e6\] \(GB\), got -1"),
        # Found by tests/test_generated_bad_input.py: each ran into NaN maps or a traceback.
        ("data.cache_gb=1e300", r"data\.cache_gb must be in \[0, 1e6\]"),
        ("optim.learning_rate=2", r"optim\.learning_rate must be in \(0, 1\], got 2\.0"),
        ("optim.learning_rate=nan", r"optim\.learning_rate must be in \(0, 1\], got nan"),
        ("optim.half_life_percent=nan", r"optim\.half_life_percent must be in \(0, 100\]"),
        ("optim.online_epochs=inf", r"optim\.online_epochs must be in \[0, 1000\], got inf"),
        ("model.tau2_fudge=1e-40", r"model\.tau2_fudge must be in \[0\.001, 1000\]"),
        ("seed=-1", r"seed must be in \[0, 9223372036854775807\], got -1"),
        ("data.pixel_size=inf", r"data\.pixel_size must be in \(0, 100\] Å, got inf"),
        ("data.pixel_size=1e308", r"data\.pixel_size must be in \(0, 100\] Å, got 1e\+308"),
        ("model.initial_resolution=1e999", r"initial_resolution must be in \(0, 10000\], got inf"),
        ("model.initial_resolution=1e308", r"model\.initial_resolution must be in \(0, 10000\]"),
        ("model.target_resolution=inf", r"model\.target_resolution must be in \(0, 10000\]"),
        ("posterior.similarity.anneal_start=50", r"before posterior\.similarity\.anneal_start"),
        ("data.particles=", r"data\.particles is empty: give a path, or null"),
        ("data.particles=1e999", r"data\.particles: expected a path, got the float inf"),
        ("data.reference=true", r"data\.reference: expected a path, got the bool True"),
        ("device=tpu", r"device must be cpu or cuda, got 'tpu'"),
        ("kernels=fast", r"kernels must be one of numba, torch, compiled, got 'fast'"),
        ("+model.num_clases=3", r"configuration: model\.num_clases: Key 'num_clases' not in"),
    ],
)
def test_a_wrong_value_is_refused_naming_its_key(override: str, message: str):
    with pytest.raises(InputError, match=message):
        read_run_config(composed(override))


def test_the_simulate_schema_is_simulate_yaml():
    """cryotorch-simulate's schema has simulate.yaml's keys and defaults, and its simulation
    settings are the library's defaults."""
    with initialize_config_module("cryotorch.configs", version_base="1.3"):
        yaml = OmegaConf.to_container(compose("simulate"), resolve=True)
    assert yaml == asdict(SimulateConfig())
    assert read_simulate_config(OmegaConf.create(yaml)).settings() == SimulationSettings()


def test_gradient_settings_are_checked_too():
    with pytest.raises(InputError, match=r"torch\.optim has no optimiser 'Adamm'"):
        read_run_config(composed("optim=gradient", "optim.gradient.optimizer=Adamm"))
    with pytest.raises(InputError, match=r"model\.regulariser=fsc filters with half-set"):
        read_run_config(composed("optim=gradient", "model.regulariser=fsc"))


@pytest.mark.parametrize(
    ("program", "override", "named"),
    [
        ("classify", "model.num_classes=two", "model.num_classes"),
        ("classify", "model.num_clases=3", "model.num_clases: not a key"),
        ("classify", "model=nonexistent", "Could not find 'model/nonexistent'"),
        ("classify", "model.num_classes=[", "no viable alternative at input"),
        ("classify", "+model.extra=1", "model.extra"),
        ("simulate", "n_particles=0", "n_particles must be >= 1"),
        ("simulate", "amplitude_contrast=1.5", "amplitude_contrast must be in [0, 1]"),
        ("simulate", "defocus_min_angstrom=3e4", "must be <= defocus_max_angstrom"),
        ("simulate", "snr=-1", "snr must be > 0"),
        ("simulate", "n_partcles=5", "n_partcles: not a key"),
    ],
)
def test_the_command_refuses_a_wrong_value_in_one_line_and_writes_nothing(
    tmp_path: Path, program: str, override: str, named: str
):
    """A wrong value, a misspelt key, an unknown option of a group or a value the override
    grammar cannot parse: one line naming it, exit 2, and no output folder (Hydra writes
    nothing before the program has checked the configuration)."""
    out = tmp_path / "run"
    command = f"from cryotorch.cli.{program} import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", command, f"output_dir={out}", override],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cryotorch-{program}: error: configuration: ")
    assert named in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output folder, nothing in the working folder


def test_a_run_records_its_whole_configuration(tmp_path: Path):
    """``.hydra/config.yaml`` holds every key with the value the run used (defaults included),
    so that composing it again gives the same configuration; ``overrides.yaml`` the command
    line's overrides."""
    from tests.run_helpers import run_classify, simulate_two_blob_classes

    star = simulate_two_blob_classes(tmp_path / "data", 60, 1.0, seed=0)
    out = tmp_path / "run"
    run_classify(star, out, "optim.max_iterations=1", "model.num_classes=3", "logger=none")
    recorded = OmegaConf.load(out / ".hydra" / "config.yaml")
    config = read_run_config(recorded)
    assert config == read_run_config(
        composed(f"data.particles={star}", f"output_dir={out}", "optim.max_iterations=1",
                 "model.num_classes=3", "logger=none")
    )  # fmt: skip
    assert config.model.num_classes == 3 and config.optim.max_iterations == 1
