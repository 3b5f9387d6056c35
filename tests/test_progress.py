"""What a run shows on a terminal and keeps in ``classify.log`` (issue 22): a progress bar with
the time left on every phase that passes over the particles (the demo's simulation, the initial
maps, online EM, each full pass, the hard maps), and the table in the log as printed."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

QUICK = ["logger=none", "model.target_resolution=12", "model.initial_resolution=18",
         "model.resolution_reach_at=2", "optim.online_epochs=1", "optim.batch_per_class=100",
         "optim.max_iterations=2", "optim.batch_size=100"]  # fmt: skip


def on_a_terminal(args: list[str]) -> str:
    """``cryotorch-classify *args`` run on a pseudo-terminal of 120 columns: all it wrote
    (standard output and error), carriage returns as line ends."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    code = "from cryotorch.cli.classify import main; main()"
    every_step = os.environ | {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}  # draw each update
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=child, stdout=child, stderr=child,
        env=every_step,
    )  # fmt: skip
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert process.wait() == 0, out.decode(errors="replace")
    return out.decode().replace("\r\n", "\n").replace("\r", "\n")


def test_every_phase_has_a_progress_bar_and_the_log_has_the_table(tmp_path: Path):
    """The built-in demo (300 particles): its simulation, the initial maps, online EM, each
    full pass and the hard maps each have a bar that reaches its total, with the time left."""
    out = tmp_path / "run"
    shown = on_a_terminal([f"output_dir={out}", "data.simulate.n_particles=300", *QUICK])
    bars = {}
    for line in shown.splitlines():
        bar = re.match(r"(.+?): +\d+%\|.*\| (\d+)/(\d+) \[\d\d:\d\d<(\d\d:\d\d|\?)", line)
        if bar:
            bars.setdefault(bar[1], []).append((int(bar[2]), int(bar[3]), bar[4]))
    # 2 online steps (300 particles, 200 a batch), full passes 2 and 3 (0-based iterations)
    phases = {"simulating", "initial maps", "online EM", "iteration 2", "iteration 3", "hard maps"}
    assert set(bars) == phases
    for label, states in bars.items():
        total, step = {"online EM": (2, 1), "simulating": (300, 256)}.get(label, (300, 100))
        assert all(n == total for _, n, _ in states), (label, states)
        dones = sorted({done for done, _, _ in states})  # redrawn after each row of the table
        assert dones == sorted({*range(0, total, step), total}), (label, states)
        assert all(re.fullmatch(r"\d\d:\d\d", left) for done, _, left in states if done)
    table = [line for line in shown.splitlines() if line.startswith(("it ", "300 particles"))]
    assert len(table) == 1 + 4
    logged = (out / "classify.log").read_text().splitlines()
    assert logged[: len(table)] == table and logged[-1].startswith("done: 4 iterations")
