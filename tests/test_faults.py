"""Faults a run meets in the field (issue 21): a second run into the same folder, a lock left
by a killed run, Ctrl-C, a full disk, a read-only folder, an earlier run's results."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
        # A suite started in the background (`pytest &`) ignores SIGINT, and so would the run
        # (Python keeps an ignored SIGINT): give it the default, as on a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """``cryotorch-classify *args`` in process: its exit status and standard error's lines."""
    from cryotorch.cli.classify import main

    monkeypatch.setattr(sys, "argv", ["cryotorch-classify", *args])
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err.strip().splitlines()


def _disk_fills_up(monkeypatch, folder_part: str, after: int) -> None:
    """Every fsync of a file whose path contains ``folder_part`` fails with ENOSPC, from the
    ``after``-th on: the disk is full from that write on (Python reports a full disk at a
    write, a flush or the fsync; all raise the same OSError)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if folder_part in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) >= after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
def test_a_full_disk_while_the_outputs_are_written_leaves_them_absent_then_resumes_exactly(
    star: Path, tmp_path: Path, monkeypatch, capsys
):
    """The disk fills up at the fourth file of the result set: one line naming that file and
    the command that continues, exit 1, no result file in the folder (none half-written, no
    hidden folder left); after space is freed, resuming gives the uninterrupted run's result."""
    args = [f"data.particles={star}", "logger=none", "logger.quiet=true"]
    args += ["optim.max_iterations=3", "model.num_classes=3"]
    _cli(monkeypatch, capsys, *args, f"output_dir={tmp_path / 'whole'}")
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _disk_fills_up(patch, ".outputs.cryotorch-tmp", after=4)
        status, lines = _cli(patch, capsys, *args, f"output_dir={out}")
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"cryotorch-classify: error: cannot write {out / 'class_001_hard.mrc'}: no space left"
    ), lines[0]
    assert lines[0].endswith("; once that is fixed, continue it: " + shlex.join(
        ["cryotorch-classify", *args, f"output_dir={out}", "resume=true"]))  # fmt: skip
    left = {p.name for p in out.iterdir()}
    # What each iteration wrote (its class table, the log), none of the result set, no lock:
    assert left == {".hydra", "checkpoint.pt", "iterations", "classify.log"}, left
    status, lines = _cli(monkeypatch, capsys, *args, f"output_dir={out}", "resume=true")
    assert status == 0, lines
    for name in ("posteriors.npy", "class_003.mrc", "class_003_hard.mrc", "particles.star"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    resumed, whole = (pd.read_csv(d / "iterations.csv") for d in (out, tmp_path / "whole"))
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), whole.drop(columns="seconds"))


def test_a_read_only_output_folder_is_one_line(star: Path, tmp_path: Path, monkeypatch, capsys):
    """A folder the run may not write into (root ignores permissions, so the refusal is the
    operating system's error raised where the first file is made)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    out = tmp_path / "run"
    monkeypatch.setattr("cryotorch.io.atomic.tempfile.mkstemp", refuse)
    status, lines = _cli(monkeypatch, capsys, f"data.particles={star}", f"output_dir={out}", *QUICK)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"cryotorch-classify: error: cannot write {out}/"), lines[0]
    assert "read-only file system" in lines[0]


def test_a_rerun_with_fewer_classes_leaves_no_class_of_the_earlier_run(star: Path, tmp_path: Path):
    """A folder holding the results of a K = 3 run (its checkpoint deleted, so resume=true
    starts again) and a K = 2 run into it: class_003*.mrc are gone, the user's own file stays."""
    out = tmp_path / "run"
    run_classify(star, out, *QUICK, "model.num_classes=3")
    (out / "checkpoint.pt").unlink()
    (out / "notes.txt").write_text("mine")
    run_classify(star, out, *QUICK, "model.num_classes=2", "resume=true")
    maps = sorted(p.name for p in out.glob("class_*.mrc"))
    assert maps == ["class_001.mrc", "class_001_hard.mrc", "class_002.mrc", "class_002_hard.mrc"]
    assert (out / "notes.txt").read_text() == "mine"
    assert np.load(out / "posteriors.npy").shape == (300, 2)


def test_a_refused_demo_run_leaves_no_simulated_data(tmp_path: Path, monkeypatch, capsys):
    """The built-in demo simulates its particles into output_dir before it reads the user's
    reference: refused then, it removes them, so the folder is not left as 'another run'."""
    out = tmp_path / "demo"
    args = [f"output_dir={out}", "data.simulate.n_particles=100"]
    status, lines = _cli(monkeypatch, capsys, *args, f"data.reference={tmp_path / 'no.mrc'}")
    assert status == 2 and lines == [
        f"cryotorch-classify: error: {tmp_path / 'no.mrc'}: file does not exist"
    ]
    assert not out.exists()
