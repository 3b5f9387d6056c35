"""Monitoring a run: the per-iteration table (printed and as CSV) and TensorBoard."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from cryotorch.evaluation import classification_accuracy
from cryotorch.io.atomic import atomic_path

if TYPE_CHECKING:  # at run time imported where first used (RunMonitor.writer)
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["REPORT_SECONDS_GUESS", "REPORT_SHARE", "RunMonitor"]

# At most this share of a run's time goes into the periodic refreshes of its report: drawing
# its figures takes about a second, as long as several whole iterations of a few thousand
# particles at box 64 (a third of a default run there, 2026-12-06), so a refresh due every
# ``report_every`` iterations is put off until the run has worked 1 / REPORT_SHARE - 1 times as
# long as the last refresh took (REPORT_SECONDS_GUESS until one has been timed, so that a run
# shorter than about 20 s has only its report at the end). The report at the end is always
# written.
REPORT_SHARE = 0.05
REPORT_SECONDS_GUESS = 1.0  # s: a refresh on the project's 2-core VM (box 64, K = 2-8)


class RunMonitor:
    """Prints each iteration's row, keeps the table, and logs to TensorBoard if asked.

    TensorBoard gets every scalar of the row, the class sizes, the histograms of both ESS
    every iteration (through :meth:`log_histograms`) and the central z, y and x sections of
    each class map as images.

    With the true classes ``truth (n,)`` (0-based; simulated data), each row gets
    ``accuracy_percent``: the particles' current classes against the truth, best matching of
    labels, over the particles assigned so far (all of them after a full pass).
    """

    def __init__(
        self,
        output_dir: Path,
        tensorboard: bool = True,
        quiet: bool = False,
        first_step: int = 0,
        truth: np.ndarray | None = None,
        num_classes: int = 0,
        report_every: int = 0,
        report_header: tuple[str, str] = ("", ""),
        log_name: str | None = "classify.log",
        report_share: float = REPORT_SHARE,
    ) -> None:
        """``first_step > 0`` for a resumed run: TensorBoard drops what an earlier attempt
        logged from that step on. ``report_every > 0``: refresh ``output_dir/report``
        (:mod:`cryotorch.report`) every that many iterations and at :meth:`write_report`;
        ``report_header``: the command and the configuration (YAML) it shows. ``log_name``:
        the log in ``output_dir`` that every line said goes to as well (None: none).
        ``report_share``: the largest share of the run's time the periodic refreshes take
        (:data:`REPORT_SHARE`; 1: every ``report_every`` iterations whatever they cost)."""
        self.output_dir = Path(output_dir)
        self.rows: list[dict] = []
        self.quiet = quiet
        self.tensorboard = tensorboard
        self.first_step = first_step
        self.truth = truth
        self.num_classes = num_classes
        self._writer: SummaryWriter | None = None
        self.report_every = report_every
        self.report_header = report_header
        self.report_share = report_share
        self._report_seconds = REPORT_SECONDS_GUESS  # how long the last refresh took
        self._report_done = time.perf_counter()  # when it ended (the run's start till then)
        self._latest_maps: torch.Tensor | None = None
        self._latest_ess: dict[str, np.ndarray] = {}
        self.log_name = log_name
        self._unlogged: list[str] = []

    @property
    def writer(self) -> SummaryWriter | None:
        """The TensorBoard writer, made on first use (a run refused early writes nothing)."""
        if self._writer is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(self.output_dir / "tensorboard"), purge_step=self.first_step or None
            )
        return self._writer

    def say(self, line: str, show: bool = True) -> None:
        """Print ``line`` (if ``show``; above any progress bar) and log it in
        ``output_dir/classify.log``, from the first iteration on: lines said before it wait,
        so that a run refused before it starts writes no log."""
        if show:
            tqdm.write(line)
            sys.stdout.flush()
        self._unlogged.append(line)
        if self.rows and self.log_name:
            with open(self.output_dir / self.log_name, "a") as log:
                log.write("".join(f"{text}\n" for text in self._unlogged))
            self._unlogged = []

    def restore(self, rows: list[dict]) -> None:
        """The rows of the iterations a resumed run has already done."""
        self.rows = list(rows)

    def annotate(self, entry: dict, assignment: np.ndarray) -> None:
        """Add ``accuracy_percent`` to ``entry`` (in place, so the run's history and its
        checkpoints keep it) if the true classes are known; ``assignment (n,)``: each
        particle's class, -1 where not assigned yet."""
        seen = assignment >= 0
        if self.truth is not None and seen.any():
            accuracy = classification_accuracy(assignment[seen], self.truth[seen], self.num_classes)
            entry["accuracy_percent"] = 100 * accuracy

    def __call__(
        self, entry: dict, maps: torch.Tensor, assignment: np.ndarray | None = None
    ) -> None:
        self.rows.append(entry)
        self._latest_maps = maps.detach()
        self.say(self.format_row(entry), show=not self.quiet)
        if self.writer is not None:
            step = entry["iteration"]
            for key, value in entry.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self.writer.add_scalar(f"run/{key}", value, step)
            self.writer.add_scalar("run/hard", float(entry["hard"]), step)
            d = maps.shape[-1]
            for k, m in enumerate(maps.detach().float().cpu()):
                sections = torch.cat([m[d // 2], m[:, d // 2], m[:, :, d // 2]], dim=1)
                lo, hi = sections.min(), sections.max()
                self.writer.add_image(
                    f"maps/class_{k + 1:03d}", ((sections - lo) / (hi - lo + 1e-12))[None], step
                )

    def log_histograms(self, values: dict[str, torch.Tensor], step: int) -> None:
        """A TensorBoard histogram of each per-particle quantity of ``values`` (name ->
        ``(m,)``: the ESS after the layers, ``class_ess``, and the E-step's, ``estep_ess``);
        the report's every ``report_every`` iterations, where a refresh keeps within its share
        of the run's time (:data:`REPORT_SHARE`; called after the row's ``__call__``)."""
        self._latest_ess = {name: value.detach().cpu().numpy() for name, value in values.items()}
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_histogram(f"run/{name}", value, step)
        if self.report_every and (step + 1) % self.report_every == 0 and self._report_due():
            self.write_report()

    def _report_due(self) -> bool:
        """Whether the run has worked long enough since the last refresh of the report for
        another to keep the refreshes' share of its time within :attr:`report_share`."""
        since = time.perf_counter() - self._report_done
        return since * self.report_share >= self._report_seconds * (1 - self.report_share)

    def write_report(self) -> Path | None:
        """Write ``output_dir/report`` now (if asked for and there is an iteration to show);
        its ``report.md``'s path."""
        if not self.report_every or self._latest_maps is None:
            return None
        from cryotorch.report import write_report  # matplotlib: only for runs with a report

        start = time.perf_counter()
        maps = self._latest_maps.float().cpu().numpy()
        command, config = self.report_header
        try:
            return write_report(self.output_dir, self.rows, maps, self._latest_ess, command, config)
        except Exception as exc:  # the report is for reading: it never stops a run
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"cryotorch: warning: the report was not written ({first})", file=sys.stderr)
            return None
        finally:
            self._report_done = time.perf_counter()
            self._report_seconds = self._report_done - start

    @staticmethod
    def format_row(entry: dict) -> str:
        fractions = " ".join(f"{v:5.3f}" for k, v in entry.items() if k.endswith("_fraction"))
        fsc = "/".join(f"{v:.1f}" for k, v in entry.items() if k.endswith("_fsc_resolution"))
        changed = entry["percent_changed"]
        changed = "   -  " if changed is None else f"{changed:6.2f}"
        accuracy = entry.get("accuracy_percent")
        return (
            f"it {entry['iteration']:3d} {entry['phase']:6s} β {entry['beta']:.3f} "
            f"{'hard' if entry['hard'] else 'soft'} {entry['resolution']:5.1f} Å  "
            f"changed {changed}%  ESS {entry['mean_class_ess']:.3f}"
            + (f" (E-step {entry['mean_estep_ess']:.3f})" if "mean_estep_ess" in entry else "")
            + f"  sizes {fractions}  "
            f"{entry.get('seconds', float('nan')):.1f} s"
            + (f"  FSC {fsc} Å" if fsc else "")
            + (f"  accuracy {accuracy:.2f} %" if accuracy is not None else "")
            + (f"  [{entry['notes']}]" if entry.get("notes") else "")
        )

    def write_csv(self, path: Path) -> None:
        if not self.rows:
            return
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
