"""The CUDA path's device handling, checked on a CPU-only machine (tests/fake_cuda.py): the
``gpu`` tests and the GPU check's scripts on an emulated CUDA device, and the emulator itself.
Each runs in a subprocess, as the emulator cannot be uninstalled; a ``sitecustomize`` installs
it in every Python process started with ``CRYOTORCH_FAKE_CUDA=1`` (the benchmark starts some)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITECUSTOMIZE = """
import os
import re
if os.environ.get("CRYOTORCH_FAKE_CUDA") == "1":
    from tests.fake_cuda import install
    install()
"""


@pytest.fixture
def emulated(tmp_path: Path) -> dict:
    """The environment of a process (and its children) on the emulated CUDA device."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(tmp_path / "site"), str(ROOT)])
    return {**os.environ, "CRYOTORCH_FAKE_CUDA": "1", "PYTHONPATH": path}


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env
    )


def test_the_emulator_raises_where_cuda_would(emulated: dict):
    code = """
        import threading
        import numpy as np, pytest, torch
        from tests.fake_cuda import DeviceMixError
        x = torch.ones(4, 3, device="cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda and (2 * x).is_cuda
        assert x.cpu().device.type == "cpu" and torch.ones(3).to(x).is_cuda
        assert torch.ones(3).cuda(non_blocking=True).is_cuda
        assert (x + torch.tensor(1.0)).is_cuda  # a 0-d CPU tensor is allowed, as in CUDA
        assert x[torch.tensor([0, 2])].is_cuda  # and so are CPU indices
        for mix in (lambda: x + torch.ones(3), lambda: x * np.ones(3), lambda: x.numpy(),
                    lambda: np.asarray(x), lambda: torch.cat([x, torch.ones(1, 3)])):
            with pytest.raises(DeviceMixError):
                mix()
        with pytest.raises(DeviceMixError):
            x[torch.tensor([0])] = torch.ones(1, 3)  # values must be on the device
        p = torch.nn.Parameter(x / 2)
        (p * x).sum().backward()
        assert p.is_cuda and p.grad.is_cuda and p.is_leaf
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.zeros(2, device="cuda").is_cuda))
        t.start(); t.join()
        assert seen == [True]
        print("emulator ok")
    """
    done = run(["-c", textwrap.dedent(code)], emulated)
    assert done.returncode == 0 and "emulator ok" in done.stdout, done.stderr[-3000:]


def test_the_cuda_tests_pass_on_an_emulated_device(emulated: dict):
    done = run(["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], emulated)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-5000:]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def test_the_gpu_check_scripts_run_on_an_emulated_device(emulated: dict, tmp_path: Path):
    # scripts/gpu_check.sh's two benchmarks, small, with the torch kernels (torch.compile needs
    # a real GPU for Triton).
    slices = run(
        ["scripts/bench_slices.py", "--device", "cuda", "--kernels", "torch", "--boxes", "16",
         "--classes", "2", "--batch", "8", "--repeats", "1"], emulated,
    )  # fmt: skip
    assert slices.returncode == 0, slices.stderr[-3000:]
    assert "device cuda" in slices.stdout and "failed" not in slices.stdout, slices.stdout
    table = tmp_path / "benchmark.md"
    bench = run(
        ["scripts/benchmark.py", "--device", "cuda", "--no-relion", "--kernels", "torch",
         "--boxes", "64", "--classes", "2", "--particles", "300", "--iterations", "2",
         "--workdir", str(tmp_path / "work"), "--output", str(table)], emulated,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "| 64 | 2 | 300 | cryotorch (cuda, torch) |" in table.read_text(), table.read_text()


def test_the_gpu_check_runs_every_file_with_gpu_tests():
    check = (ROOT / "scripts" / "gpu_check.sh").read_text()
    marked = re.compile(r'^@pytest\.mark\.(gpu$|parametrize\("device", DEVICES\))', re.MULTILINE)
    files = [
        p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if marked.search(p.read_text())
    ]
    assert len(files) >= 5, files
    for name in files:
        assert f"tests/{name} " in check, f"scripts/gpu_check.sh leaves out tests/{name}"
