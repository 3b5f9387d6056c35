"""Checkpoint and resume: a run killed with SIGKILL and resumed ends bit for bit as the
uninterrupted run; a folder holding another run is refused; checkpoints load weights-only."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryotorch.cli.schema import read_run_config
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify as classify_particles
from cryotorch.engine.settings import ClassificationSettings, Masks, ModelSettings, OptimSettings
from cryotorch.engine.state import CHECKPOINT_FORMAT, check_resumable
from cryotorch.errors import InputError
from cryotorch.io import ParticleImages, read_particles
from cryotorch.io.checkpoint import load_checkpoint, save_checkpoint
from cryotorch.simulate.particles import SimulationSettings, simulate_particles
from tests.physics_helpers import blob_volume

ARGS = [
    "logger=none",
    "model.target_resolution=8",
    "model.initial_resolution=18",
    "model.resolution_reach_at=3",
    "optim.online_epochs=1",
    "optim.batch_per_class=300",
    "optim.max_iterations=6",
    "posterior.similarity.anneal_end=4",
]
OUTPUTS = ["class_001.mrc", "class_002.mrc", "posteriors.npy", "posteriors_estep.npy"]


@pytest.fixture(scope="module")
def star(tmp_path_factory) -> Path:
    """3,000 particles of two blob maps (box 32, 3 Å), SNR 0.5: 5 online + 2 full iterations."""
    d = 32
    a = blob_volume(d, (5, 0, -3), 3.0) + blob_volume(d, (-5, 3, 2), 2.5)
    b = a + 1.5 * blob_volume(d, (0, -8, 5), 2.5)
    folder = tmp_path_factory.mktemp("resume_data")
    maps = torch.stack([a, b]).float().numpy()
    return simulate_particles(
        maps, 3.0, folder, SimulationSettings(n_particles=3000, snr=0.5, seed=2)
    )


def start(star: Path, out: Path, *extra: str) -> subprocess.Popen:
    code = "from cryotorch.cli.classify import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, f"data.particles={star}", f"output_dir={out}", *ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=open(out.parent / f"{out.name}.stderr", "w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(process: subprocess.Popen) -> str:
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 0, stdout
    return stdout


def kill_when(process: subprocess.Popen, marker: str) -> None:
    """SIGKILL the run as soon as it prints a line holding ``marker``."""
    for line in process.stdout:
        if marker in line:
            process.send_signal(signal.SIGKILL)
            break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before {marker!r}"


def iterations_without_time(out: Path) -> list[dict]:
    with open(out / "iterations.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(star: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    stdout = finish(start(star, out))
    assert float(stdout.rsplit("true classes ", 1)[1].split(" %")[0]) >= 99
    return out


# The printed row of iteration i comes after its checkpoint: a kill there lands in i + 1.
KILL_POINTS = {
    "initialisation": "particles, box",  # printed before the first iteration, no checkpoint
    "online_em": "it   1 online",
    "full_em": "it   5 full",
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_and_resumed_run_is_bit_identical(
    star: Path, reference: Path, tmp_path: Path, point: str
):
    out = tmp_path / "run"
    kill_when(start(star, out), KILL_POINTS[point])
    assert not (out / "posteriors.npy").exists()
    if point != "initialisation":
        killed_at = load_checkpoint(out / "checkpoint.pt", CHECKPOINT_FORMAT)["iteration"]
        assert 1 <= killed_at < len(iterations_without_time(reference))
    # A kill before the first checkpoint leaves nothing to resume (resume=true starts afresh);
    # after one, the folder is refused without resume=true, and with it the run ends as if it
    # had never been killed.
    if point == "initialisation":
        assert not (out / "checkpoint.pt").exists()
        return check_resumed(star, out, reference, "no checkpoint.pt")
    refused = subprocess.run(
        [sys.executable, "-c", "from cryotorch.cli.classify import main; main()",
         f"data.particles={star}", f"output_dir={out}", *ARGS],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "add resume=true to continue it" in refused.stderr
    check_resumed(star, out, reference, f"resuming {out / 'checkpoint.pt'} after iteration")


def check_resumed(star: Path, out: Path, reference: Path, message: str) -> None:
    assert message in finish(start(star, out, "resume=true"))
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert iterations_without_time(out) == iterations_without_time(reference)


def test_checkpoint_is_plain_tensors_and_values(reference: Path):
    state = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert state["finished"] and state["iteration"] == len(iterations_without_time(reference))
    np.testing.assert_array_equal(
        state["posteriors"].numpy(), np.load(reference / "posteriors.npy")
    )


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_with_code_is_refused_not_run(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": 1, "x": _Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match=r"checkpoint\.pt: not a cryotorch checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt", CHECKPOINT_FORMAT)
    assert not (tmp_path / "pwned").exists()


def test_resume_with_other_settings_is_refused(reference: Path):
    state = load_checkpoint(reference / "checkpoint.pt", CHECKPOINT_FORMAT)
    settings = read_run_config(
        state["settings"] | {"model": state["settings"]["model"] | {"num_classes": 3}}
    ).settings()
    with pytest.raises(InputError, match=r"settings: .*model.num_classes was 2, now 3"):
        check_resumable("checkpoint.pt", state, settings, state["n_particles"], state["box"])
    with pytest.raises(InputError, match="of 3000 particles at working box 24, this run has 10"):
        check_resumable("checkpoint.pt", state, settings, 10, 24)


@pytest.mark.gpu
def test_a_cuda_run_resumes_from_its_checkpoint_file(star: Path, tmp_path: Path):
    """A run on CUDA stopped after its third checkpoint (online EM) and resumed from the file,
    which loads on the CPU, ends as the run that was not stopped: the same classes, and maps
    and posteriors to float32 tolerance (CUDA's sums need not be in the same order twice)."""
    settings = ClassificationSettings(
        model=ModelSettings(target_resolution=8, initial_resolution=18, resolution_reach_at=3),
        optim=OptimSettings(online_epochs=1, batch_per_class=300, max_iterations=6),
        progress=False,
    )

    class Stopped(Exception):
        pass

    saved = []

    def save_then_stop(state: dict) -> None:
        save_checkpoint(tmp_path / "checkpoint.pt", state)
        saved.append(state["iteration"])
        if len(saved) == 3:
            raise Stopped

    with ParticleImages(read_particles(star)) as images:
        batcher = BatchMaker(images, 24, torch.device("cuda"))
        whole = classify_particles(batcher, settings)
        with pytest.raises(Stopped):
            classify_particles(batcher, settings, checkpoint=save_then_stop)
        state = load_checkpoint(tmp_path / "checkpoint.pt", CHECKPOINT_FORMAT)
        assert state["maps"].device.type == "cpu" and state["iteration"] == saved[-1]
        resumed = classify_particles(batcher, settings, resume=state)
    assert (resumed.posteriors.argmax(1) == whole.posteriors.argmax(1)).mean() > 0.99
    np.testing.assert_allclose(resumed.posteriors, whole.posteriors, atol=1e-3)
    torch.testing.assert_close(resumed.maps.cpu(), whole.maps.cpu(), rtol=1e-3, atol=1e-4)
    assert [h["iteration"] for h in resumed.history] == [h["iteration"] for h in whole.history]


def test_a_focused_run_on_a_given_reference_resumes_exactly(star: Path):
    """With a focus mask and a given reference V̄, the reference's fit to the particles (made
    once, with the initial noise) is part of the state: a run stopped after its third
    checkpoint and resumed from it ends bit for bit as the run that was not stopped (the
    reference used to be fitted again on resuming, with the noise of that iteration)."""
    settings = ClassificationSettings(
        model=ModelSettings(target_resolution=8, initial_resolution=18, resolution_reach_at=3),
        optim=OptimSettings(online_epochs=1, batch_per_class=300, max_iterations=4),
        progress=False,
    )
    d = 24
    z, y, x = torch.meshgrid(*[torch.arange(d) - d // 2] * 3, indexing="ij")
    focus = ((x**2 + (y + 6) ** 2 + (z - 4) ** 2) < 36).float()
    reference = 7.0 * blob_volume(d, (4, 0, -2), 2.0).float()  # another greyscale
    masks = Masks(focus=focus, consensus=reference)

    class Stopped(Exception):
        pass

    saved: list[dict] = []

    def keep_then_stop(state: dict) -> None:
        saved.append(state)
        if len(saved) == 3:
            raise Stopped

    with ParticleImages(read_particles(star)) as images:
        batcher = BatchMaker(images, d, torch.device("cpu"))
        whole = classify_particles(batcher, settings, masks=masks)
        with pytest.raises(Stopped):
            classify_particles(batcher, settings, masks=masks, checkpoint=keep_then_stop)
        resumed = classify_particles(batcher, settings, masks=masks, resume=saved[-1])
    np.testing.assert_array_equal(resumed.posteriors, whole.posteriors)
    assert torch.equal(resumed.maps, whole.maps)


ROOT = Path(__file__).resolve().parents[1]


def run_killed_at_write(star: Path, out: Path, n: int, before: bool, *extra: str) -> int:
    """The run of ``start``, SIGKILLed at its ``n``-th file rename (0: not killed); returns
    the exit status (the number of renames is in ``out``'s sibling ``.count``)."""
    count = out.parent / f"{out.name}.count"
    done = subprocess.run(
        [sys.executable, "-m", "tests.kill_at_write", str(count), str(n), str(int(before)),
         f"data.particles={star}", f"output_dir={out}", *ARGS, *extra],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


@pytest.fixture(scope="module")
def renames(star: Path, tmp_path_factory) -> int:
    """How many file renames the uninterrupted run makes (checkpoints, then the result set)."""
    out = tmp_path_factory.mktemp("counted") / "run"
    assert run_killed_at_write(star, out, 0, False) == 0
    return int((out.parent / "run.count").read_text())


# Kill points drawn at random (seeded, so that CI is reproducible): three anywhere in the run,
# one among the final writes; each before or after its rename.
_RNG = np.random.default_rng(21)
RANDOM_POINTS = [(float(_RNG.random()), bool(_RNG.integers(2))) for _ in range(3)]
FINAL_POINT = (float(_RNG.random()), bool(_RNG.integers(2)))


@pytest.mark.parametrize("where", ["random_1", "random_2", "random_3", "final_writes"])
def test_killed_at_a_random_write_and_resumed_is_bit_identical(
    star: Path, reference: Path, renames: int, tmp_path: Path, where: str
):
    """A run SIGKILLed at a randomly drawn file rename (before or after it: a temporary file
    left, or the new file in place and the next not yet), then resumed: the result is the
    uninterrupted run's, byte for byte, and no temporary file is left."""
    assert renames > 10  # every iteration's checkpoint, then the result set's files
    fraction, before = FINAL_POINT if where == "final_writes" else RANDOM_POINTS[int(where[-1]) - 1]
    final = 9  # the last renames: 4 maps, particles.star, 2 posteriors, iterations.csv, ...
    first, last = (renames - final, renames) if where == "final_writes" else (1, renames)
    point = first + int(fraction * (last - first))
    out = tmp_path / "run"
    assert run_killed_at_write(star, out, point, before) == -signal.SIGKILL
    assert run_killed_at_write(star, out, 0, False, "resume=true") == 0
    for name in (*OUTPUTS, "class_001_hard.mrc", "class_002_hard.mrc", "particles.star"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), (name, point)
    assert iterations_without_time(out) == iterations_without_time(reference)
    assert not list(out.glob(".*cryotorch-tmp*")), point
