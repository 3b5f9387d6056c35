"""Our .cs files against cryoSPARC's own reader and writer (cryosparc-tools, BSD-3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryotorch.io import read_particles, write_particles
from tests import files

dataset = pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools is a dev dependency")


def test_cryosparc_tools_reads_what_we_write(tmp_path: Path):
    files.write_stacks(tmp_path)
    t = read_particles(files.write_star31(tmp_path))
    posterior = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32)
    new = {
        "alignments3D/class": posterior.argmax(1).astype(np.uint32),
        "alignments3D/class_ess": (1 / (posterior**2).sum(1)).astype(np.float32),
        **{f"alignments_class3D_{k}/class_posterior": posterior[:, k] for k in range(2)},
    }
    write_particles(t, tmp_path / "out.cs", new)
    d = dataset.Dataset.load(tmp_path / "out.cs")
    assert len(d) == 3
    assert list(d["blob/path"]) == [str(p) for p in t.image_path]
    np.testing.assert_array_equal(d["blob/idx"], [0, 2, 1])
    np.testing.assert_array_equal(d["alignments3D/class"], [0, 1, 0])
    np.testing.assert_allclose(d["alignments_class3D_1/class_posterior"], posterior[:, 1])
    expected = files.cs_for_star31()
    for name in ("ctf/df1_A", "ctf/df_angle_rad", "alignments3D/shift", "alignments3D/split"):
        np.testing.assert_allclose(d[name], expected[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d["alignments3D/pose"], expected["alignments3D/pose"], atol=1e-6)


def test_we_read_what_cryosparc_tools_writes(tmp_path: Path):
    files.write_stacks(tmp_path)
    raw = files.cs_for_star31()
    spec = []
    for name in raw.dtype.names:
        if name == "uid":
            continue
        base, shape = raw.dtype.fields[name][0].base.str, raw[name].shape[1:]
        base = "O" if name == "blob/path" else base  # cryosparc-tools keeps strings as objects
        spec.append((name, base, shape) if shape else (name, base))
    d = dataset.Dataset.allocate(3, spec)
    for name in raw.dtype.names:
        d[name] = raw[name] if name != "blob/path" else [p.decode() for p in raw[name]]
    d.save(tmp_path / "saved.cs")
    t = read_particles(tmp_path / "saved.cs")
    star = read_particles(files.write_star31(tmp_path))
    np.testing.assert_array_equal(t.image_path, star.image_path)
    np.testing.assert_allclose(t.rotation, star.rotation, atol=1e-6)
    np.testing.assert_allclose(t.origin_angstrom, star.origin_angstrom, atol=1e-5)
