"""Outputs are written atomically: a failed write leaves the old file, or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryotorch.io.atomic import atomic_path


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path):
    target = tmp_path / "out.star"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new, half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_successful_write_replaces_with_usual_permissions(tmp_path: Path):
    target = tmp_path / "sub" / "out.cs"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix.endswith(".cs")
        tmp.write_text("done")
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
