"""A STAR file as data blocks: its loop tables read with ``starfile``, typed access to their
columns, and blocks written with a fixed version line.

Nothing here knows RELION's vocabulary beyond the ``data_optics`` block RELION may write
as key/value pairs; messages name blocks as the file names them (``data_images``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryotorch.errors import InputError
from cryotorch.io.atomic import atomic_path

__all__ = ["block_names", "numeric_column", "read_blocks", "require_columns", "write_star_blocks"]


def block_names(blocks: list[str]) -> str:
    """Blocks (names without ``data_``) as the file names them: ``data_optics, data_particles``."""
    return ", ".join(f"data_{k}" for k in blocks)


def read_blocks(path: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The file's loop tables by block name (``data_`` prefix removed), and the names of all
    its blocks, key/value ones included, in file order.

    A key/value ``data_optics`` block (one group written without ``loop_``) is a one-row table.
    """
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile/pandas raise many types on garbage
        raise InputError(path, None, f"not a readable STAR file ({_why(exc)})") from exc
    blocks = dict(blocks or {})
    if not blocks:
        raise InputError(path, None, "not a STAR file: no data_ block found")
    if isinstance(blocks.get("optics"), dict):
        blocks["optics"] = pd.DataFrame([blocks["optics"]])
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    for name, table in tables.items():
        twice = table.columns[table.columns.duplicated()]
        if len(twice):
            raise InputError(
                path, f"data_{name}", f"column {twice[0]} appears twice; expected each once"
            )
    if not tables:
        raise InputError(
            path,
            None,
            f"a STAR file with no particle table (its blocks: {block_names(list(blocks))}, with "
            "key/value pairs only); expected a RELION particle file, whose particles are a "
            "loop_ table with rlnImageName",
        )
    for name, table in tables.items():
        _refuse_rows_short_of_values(path, name, table)
    return tables, list(blocks)


def _refuse_rows_short_of_values(path: Path, name: str, table: pd.DataFrame) -> None:
    """Refuse a loop row with no value in the table's last column: a row with fewer values
    than the table has columns (a file cut short, a value deleted), whose missing values
    starfile fills from the right (NaN, or '' in a text column), so that every value after
    the gap sits under the wrong column. (A literal ``nan`` there reads the same; no program
    writes one.)"""
    if len(table) == 0 or not len(table.columns):
        return
    last = table.columns[-1]
    missing = table[last].isna() | (table[last].astype(str) == "")  # '' in a text column
    short = np.flatnonzero(missing.to_numpy())
    if short.size:
        raise InputError(
            path,
            f"data_{name}",
            f"row {short[0] + 1}: no value in its last column {last} (nan, or fewer values "
            f"than the table's {len(table.columns)} columns): expected one value per column "
            "(is the file cut short, or a value missing?)",
        )


def _why(exc: Exception) -> str:
    """What starfile or pandas said, on one line, in the file's terms where it can be: a loop
    row with more or fewer values than the table's first row, or than its columns."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if fields:
        expected, row, saw = fields.groups()
        return (
            f"row {row} of a loop table has {saw} values, its first row {expected}: expected "
            "one value per column in every row"
        )
    length = re.search(
        r"Length mismatch: Expected axis has (\d+) elements, new values have (\d+)", text
    )
    if length:
        values, columns = length.groups()
        short = " (is the file cut short?)" if int(values) < int(columns) else ""
        return (
            f"the first row of a loop table has {values} values for its {columns} columns: "
            f"expected one value per column{short}"
        )
    return text


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str) -> None:
    """An InputError naming every one of ``columns`` that block ``data_<block>`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"data_{block}", f"missing required column(s) {', '.join(missing)}")


def numeric_column(
    df: pd.DataFrame, column: str, path: Path, default: float | None = None
) -> np.ndarray:
    """Column as float64, with a clear error naming the first bad row."""
    if column not in df.columns:
        if default is None:
            raise InputError(path, column, "required column is missing")
        return np.full(len(df), default, dtype=np.float64)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        got = df[column].iloc[bad[0]]
        try:  # nan, not np.float64(nan)
            shown = repr(got) if isinstance(got, str) else f"{float(got):g}"
        except (TypeError, ValueError):
            shown = repr(got)
        raise InputError(path, column, f"row {bad[0] + 1}: expected a finite number, got {shown}")
    return values


def write_star_blocks(
    blocks: dict[str, pd.DataFrame | dict[str, object]], path: str | os.PathLike[str]
) -> None:
    """Write STAR data blocks atomically (a table as a loop, a dict as ``_name value`` pairs),
    with RELION's version line and no time stamp.

    starfile's first line names the time of writing; it is replaced by ``# version 30001`` so
    that the same tables always give the same bytes.
    """
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        lines = tmp.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# Created by the starfile"):
            lines[0] = "# version 30001\n"
        tmp.write_text("".join(lines))
