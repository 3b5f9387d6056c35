"""Faults a run meets in the field (issue 21): a second run into the same folder, a lock left
by a killed run, Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import starfile

from cryotorch.cli.lock import LOCK_NAME
from cryotorch.errors import InputError
from tests.run_helpers import run_classify, simulate_two_blob_classes

QUICK = ["logger=none", "logger.quiet=true", "optim.max_iterations=2"]


@pytest.fixture(scope="module")
def star(tmp_path_factory) -> Path:
    return simulate_two_blob_classes(tmp_path_factory.mktemp("faults"), 300, 1.0, seed=5)


def test_a_second_run_into_a_folder_in_use_is_refused(star: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # a live process holding the folder
    try:
        (out / LOCK_NAME).write_text(f"{other.pid} {socket.gethostname()}\n")
        with pytest.raises(InputError, match=rf"another cryotorch run \(process {other.pid}\)"):
            run_classify(star, out, *QUICK)
    finally:
        other.kill()
        other.wait()
    assert {p.name for p in out.iterdir()} == {LOCK_NAME}  # nothing written, its lock kept


def test_a_lock_from_another_host_is_refused_naming_the_file(star: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("123 node-17.cluster\n")
    with pytest.raises(InputError, match=rf"process 123 on node-17.*delete .*{LOCK_NAME}"):
        run_classify(star, out, *QUICK)


def test_the_lock_of_a_killed_run_is_taken_over(star: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # its process id is free now
    (out / LOCK_NAME).write_text(f"{gone.pid} {socket.gethostname()}\n")
    run_classify(star, out, *QUICK)
    assert (
        "taking over the lock of a run that ended without releasing it" in capsys.readouterr().out
    )
    assert (out / "particles.star").is_file() and not (out / LOCK_NAME).exists()


def test_ctrl_c_prints_one_line_with_the_command_that_continues(star: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = [f"data.particles={star}", f"output_dir={out}", "logger=none"]
    args += ["optim.max_iterations=25", "optim.batch_per_class=50"]  # many short iterations
    process = subprocess.Popen(
        [sys.executable, "-c", "from cryotorch.cli.classify import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stdout:
        if line.startswith("it   2"):
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("cryotorch-classify: interrupted; to continue it: ")
    assert lines[0].endswith("resume=true") and f"output_dir={out}" in lines[0]
    assert (out / "checkpoint.pt").is_file() and not (out / LOCK_NAME).exists()


def test_resuming_with_a_particle_file_edited_in_place_is_refused(star: Path, tmp_path: Path):
    """Same path, same number of particles, one defocus changed: not the run's particles."""
    data = tmp_path / "data"
    shutil.copytree(star.parent, data)
    mine = data / star.name
    out = tmp_path / "run"
    run_classify(mine, out, *QUICK)
    run_classify(mine, out, *QUICK, "resume=true")  # the same particles: resumes
    blocks = starfile.read(mine, always_dict=True)
    blocks["particles"].loc[0, "rlnDefocusU"] += 10.0
    starfile.write(blocks, mine, overwrite=True)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match=r"other settings: inputs\.particles_sha256 was"):
        run_classify(mine, out, *QUICK, "resume=true")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
