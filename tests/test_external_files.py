"""Files that other tools wrote, from other projects' public test data (``tests/data/external``;
each file's project, path, commit and licence are in its SOURCES.md). They are read as the
other tools mean them, or refused in one line that says why."""

from __future__ import annotations

import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from cryosparc.dataset import Dataset
from scipy.spatial.transform import Rotation

from cryotorch.cli.convert import main as convert_main
from cryotorch.errors import InputError, InputWarning
from cryotorch.io import read_map, read_particles

EXT = Path(__file__).parent / "data" / "external"


def test_a_relion31_particle_file_converts_to_what_cryosparc_reads(tmp_path: Path, capsys):
    """teamtomo/starfile's RELION 3.1 file (one particle, box 400, constant rlnRandomSubset):
    the .cs that cryosparc-tools reads back has its values in cryoSPARC's conventions, worked
    out here from the STAR with scipy (pyem's and cryoDRGN's pose convention)."""
    path = EXT / "starfile" / "optics_group_inter1965.star"
    raw = starfile.read(path)
    p, o = raw["particles"].iloc[0], raw["optics"].iloc[0]
    with pytest.warns(InputWarning, match="rlnRandomSubset: gives every particle the same"):
        table = read_particles(path)
    assert table.optics.number.tolist() == [1] and table.random_subset.tolist() == [0]
    out = tmp_path / "p.cs"
    assert convert_main([str(path), str(out), "--no-check-stacks"]) == 0  # box from the file
    assert "not carried" in capsys.readouterr().err  # rlnMicrographName, coordinates, ...
    cs = Dataset.load(out)
    assert cs["blob/shape"].tolist() == [[400, 400]]
    assert cs["blob/idx"].tolist() == [0]
    assert cs["blob/path"][0].endswith("0001_sum_particles.mrcs")
    assert cs["ctf/exp_group_id"].tolist() == [1]
    np.testing.assert_allclose(cs["blob/psize_A"], o["rlnImagePixelSize"], rtol=1e-6)
    np.testing.assert_allclose(cs["ctf/df1_A"], p["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(cs["ctf/df2_A"], p["rlnDefocusV"], rtol=1e-6)
    np.testing.assert_allclose(cs["ctf/df_angle_rad"], np.radians(p["rlnDefocusAngle"]), 1e-6)
    np.testing.assert_allclose(cs["ctf/amp_contrast"], o["rlnAmplitudeContrast"], rtol=1e-6)
    origin = np.array([p["rlnOriginXAngst"], p["rlnOriginYAngst"]])
    np.testing.assert_allclose(cs["alignments3D/shift"][0], origin / 1.04, rtol=1e-5)
    angles = [p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"]]
    expected = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    got = Rotation.from_rotvec(cs["alignments3D/pose"][0]).as_matrix()
    np.testing.assert_allclose(got, expected, atol=1e-6)


REFUSED = [
    ("starfile/postprocess.star", r"no particle table \(its blocks: data_general, data_fsc"),
    ("starfile/two_basic_blocks.star", r"no particle table .*key/value pairs only"),
    ("starfile/two_single_line_loop_blocks.star", r"no particle table .*none has an rlnImageN"),
    ("starfile/empty_loop.star", r"no particle table"),
    ("starfile/rln3.1_data_style.star", r"several blocks have rlnImageName"),
    ("starfile/one_loop.star", r"one_loop\.star: data_: missing required column\(s\) rlnDefocusU"),
    ("cryoet-data-portal-backend/relion_4_star.star", r"3D images \(subtomograms\)"),
    ("cryoet-data-portal-backend/relion_3_star.star", r"data_: missing required column"),
    ("cryoet-data-portal-backend/stopgap_star.star", r"no particle table .*stopgap_motivelist"),
    ("cryoet-data-portal-backend/tomoman_relion_star.star", r"no particle table"),
    ("cryosparc-tools/4k_dataset.cs", r"4k_dataset\.cs: the table is empty"),
]


@pytest.mark.parametrize(("name", "message"), REFUSED, ids=[n for n, _ in REFUSED])
def test_files_that_are_not_2d_particle_sets_are_refused_in_one_line(
    tmp_path: Path, capsys, name: str, message: str
):
    out = tmp_path / ("out.star" if name.endswith(".cs") else "out.cs")
    assert convert_main([str(EXT / name), str(out), "--no-check-stacks"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cryotorch-convert: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_cs_header_over_numpys_limit_is_read(tmp_path: Path):
    """cryosparc-tools' hetero-refinement test file (3 classes, header 4,086 characters) with
    its class fields repeated for 20 classes, as a 20-class job writes them: the header passes
    numpy's default limit, which cryotorch lifts (the file has no rows, which it then says)."""
    data = np.load(EXT / "cryosparc-tools" / "4k_dataset.cs")
    per_class = [f for f in data.dtype.descr if f[0].startswith("alignments_class_0/")]
    extra = [
        (f[0].replace("_class_0/", f"_class_{k}/"), *f[1:]) for k in range(3, 20) for f in per_class
    ]
    bigger = np.zeros(0, dtype=data.dtype.descr + extra)
    path = tmp_path / "J20_particles.cs"
    with open(path, "wb") as f:
        np.save(f, bigger)
    with pytest.raises(ValueError, match="max_header_size"):
        np.load(path)
    with pytest.raises(InputError, match="the table is empty"):
        read_particles(path)


@pytest.mark.parametrize(
    ("name", "shape", "voxel"),
    [
        ("mrcfile/EMD-3197.map", (20, 20, 20), 11.4),  # EMDB map, written by EMDB's tools
        ("cryoet-data-portal-backend/signed_ints.mrc", (4, 4, 4), 14.08),  # mode 0
        ("cryoet-data-portal-backend/input_mrc.mrc", (4, 4, 4), 14.08),
        ("cryohub/test.mrc", (3, 3, 3), 0.0),  # voxel size not set
    ],
)
def test_maps_of_other_writers_read_as_mrcfile_reads_them(name: str, shape: tuple, voxel: float):
    data, got_voxel = read_map(EXT / name)
    with mrcfile.open(EXT / name, permissive=True) as mrc:
        reference = np.asarray(mrc.data, dtype=np.float32)
    assert data.shape == shape
    np.testing.assert_array_equal(data, reference)
    assert got_voxel == pytest.approx(voxel, abs=1e-3)
