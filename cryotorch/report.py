"""A run's report for people who do not open TensorBoard: ``output_dir/report/``.

``report.md`` (the command, the table's last row, the figures, the configuration) and three
PNG figures drawn with matplotlib's object API (no pyplot, no display: it works on a headless
machine): ``progress.png`` (class sizes, both mean ESS, β, resolution, log-likelihood and,
for simulated particles, accuracy, per iteration), ``maps.png`` (the central z, y and x
sections of every class map) and ``ess.png`` (histograms of both ESS of the latest
iteration). Written by :class:`cryotorch.monitor.RunMonitor` every few iterations and at the
end, each file atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cryotorch.io.atomic import atomic_path

__all__ = ["REPORT_DIR", "write_report"]

REPORT_DIR = "report"


def write_report(
    output_dir: Path,
    rows: Sequence[dict],
    maps: np.ndarray,
    ess: dict[str, np.ndarray],
    command: str,
    config_yaml: str,
) -> Path:
    """Write the report of a run with table ``rows`` (one dict per iteration), class maps
    ``(k, d, d, d)``, the latest per-particle ESS by name (``class_ess``: after the layers,
    ``estep_ess``: the E-step's) into ``output_dir/report``; return ``report.md``'s path."""
    folder = Path(output_dir) / REPORT_DIR
    _save(folder / "progress.png", _progress(rows))
    _save(folder / "maps.png", _maps(maps))
    if ess:
        _save(folder / "ess.png", _ess(ess, maps.shape[0]))
    last = rows[-1] if rows else {}
    table = "\n".join(
        f"| {key} | {_text(value)} |" for key, value in last.items() if key != "notes"
    )
    lines = [
        "# cryotorch run report",
        "",
        f"`{command}`",
        "",
        f"{len(rows)} iterations so far."
        + (f" Notes: {last['notes']}" if last.get("notes") else ""),
        "",
        "![progress](progress.png)",
        "",
        "![class maps: central sections](maps.png)",
        "",
        *(["![ESS histograms](ess.png)", ""] if ess else []),
        "## Last iteration",
        "",
        "| column | value |",
        "|---|---|",
        table,
        "",
        "## Configuration",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    path = folder / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _save(path: Path, figure: Figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _series(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in rows])


def _progress(rows: Sequence[dict]) -> Figure:
    """Per iteration: class sizes; both mean ESS; β; resolution; log-likelihood; accuracy."""
    figure = Figure(figsize=(12, 6.5), layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    it = _series(rows, "iteration")
    fractions = sorted({key for row in rows for key in row if key.endswith("_fraction")})
    for key in fractions:
        axes[0].plot(it, _series(rows, key), marker=".", label=key.split("_")[1])
    axes[0].set_title("class sizes (fraction)")
    if fractions:
        axes[0].legend(title="class", fontsize="small")
    axes[1].plot(it, _series(rows, "mean_class_ess"), marker=".", label="after the layers")
    axes[1].plot(it, _series(rows, "mean_estep_ess"), marker=".", label="E-step")
    axes[1].set_title("mean ESS")
    axes[1].legend(fontsize="small")
    for ax, key, title in (
        (axes[2], "beta", "β (class similarity)"),
        (axes[3], "resolution", "E-step resolution (Å)"),
        (axes[4], "log_likelihood", "mean log-likelihood"),
        (axes[5], "accuracy_percent", "accuracy against the true classes (%)"),
    ):
        values = _series(rows, key)
        if np.isfinite(values).any():
            ax.plot(it, values, marker=".")
        else:
            ax.text(0.5, 0.5, "not known", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("iteration")
    return figure


def _maps(maps: np.ndarray) -> Figure:
    """The central z, y and x sections of each class map, a row per class."""
    k, d = maps.shape[0], maps.shape[-1]
    figure = Figure(figsize=(6, 2 * k + 0.4), layout="constrained")
    axes = np.asarray(figure.subplots(k, 3, squeeze=False))
    for i, volume in enumerate(maps):
        sections = (volume[d // 2], volume[:, d // 2], volume[:, :, d // 2])
        for j, (section, name) in enumerate(zip(sections, ("z", "y", "x"), strict=True)):
            axes[i, j].imshow(section, cmap="gray")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            axes[i, j].set_title(f"class {i + 1}, central {name}", fontsize="small")
    return figure


def _ess(ess: dict[str, np.ndarray], k: int) -> Figure:
    """Histograms of the per-particle ESS of the latest iteration, over its range [1, ``k``]
    (fixed bins: under force hard every value is 1)."""
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    labels = {"class_ess": "after the layers", "estep_ess": "E-step"}
    bins = np.linspace(1.0, max(float(k), 2.0), 41).tolist()
    for name, values in ess.items():
        ax.hist(np.asarray(values), bins=bins, alpha=0.6, label=labels.get(name, name))
    ax.set_xlabel("ESS of a particle (1: one class, K: all equally)")
    ax.set_ylabel("particles")
    ax.legend(fontsize="small")
    return figure
