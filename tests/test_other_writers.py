"""Stacks and particle files as other tools write them: MRC headers without the ``MAP `` id or
with a zero machine stamp (older writers), header pixel sizes left at 0 or 1.0, STAR files with
no box size. The MRC files are written byte by byte from the MRC2014 format description
(Cheng et al. 2015, J. Struct. Biol. 192:146), not with mrcfile or cryotorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from cryosparc.dataset import Dataset

from cryotorch.cli.convert import main as convert_main
from cryotorch.errors import InputError, InputWarning
from cryotorch.io import ParticleImages, read_map, read_particles
from tests import files


def write_old_mrc(
    path: Path,
    data: np.ndarray,
    voxel: float = 0.0,
    map_id: bytes = b"\0\0\0\0",
    machst: bytes = b"\0\0\0\0",
    byte_order: str = "<",
) -> None:
    """An MRC file (mode 2) as an older writer makes it: words 1-3 the dimensions (x, y, z),
    word 4 the mode, words 8-10 the sampling, 11-13 the cell (Å), 17-19 the axis order,
    word 53 ``MAP `` (here ``map_id``) and word 54 the machine stamp (here ``machst``);
    then the float32 data, x fastest."""
    nz, ny, nx = data.shape
    words = np.zeros(256, dtype=f"{byte_order}i4")
    words[[0, 1, 2]] = nx, ny, nz
    words[3] = 2
    words[[7, 8, 9]] = nx, ny, nz
    words[[16, 17, 18]] = 1, 2, 3
    header = bytearray(words.tobytes())
    cell = np.array([nx, ny, nz], dtype=f"{byte_order}f4") * voxel
    header[40:52] = cell.tobytes()
    header[52:64] = np.array([90, 90, 90], dtype=f"{byte_order}f4").tobytes()
    header[208:212] = map_id
    header[212:216] = machst
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(header) + data.astype(f"{byte_order}f4").tobytes())


def stacks_of_old_writer(folder: Path, voxel: float = 0.0, **kw) -> dict[str, np.ndarray]:
    """``Stacks/a.mrcs`` (3 images) and ``Stacks/b.mrcs`` (2) of STAR31, written as above."""
    rng = np.random.default_rng(3)
    out = {}
    for name, n in (("a", 3), ("b", 2)):
        out[name] = rng.normal(size=(n, 16, 16)).astype(np.float32)
        write_old_mrc(folder / "Stacks" / f"{name}.mrcs", out[name], voxel, **kw)
    return out


@pytest.mark.parametrize(
    ("map_id", "machst", "byte_order"),
    [
        (b"\0\0\0\0", b"\0\0\0\0", "<"),  # neither id nor stamp
        (b"MAP ", b"\0\0\0\0", "<"),  # zero machine stamp only
        (b"\0\0\0\0", b"DA\0\0", "<"),  # no id, proper stamp
        (b"\0\0\0\0", b"\0\0\0\0", ">"),  # big-endian with no stamp: the mode tells
    ],
)
def test_stacks_of_older_writers_are_read_with_one_warning(
    tmp_path: Path, map_id: bytes, machst: bytes, byte_order: str
):
    truth = stacks_of_old_writer(tmp_path, map_id=map_id, machst=machst, byte_order=byte_order)
    table = read_particles(files.write_star31(tmp_path))
    with pytest.warns(InputWarning, match="older MRC writer"):
        with ParticleImages(table) as images:
            got = images.read(np.arange(3))
    np.testing.assert_array_equal(got, np.stack([truth["a"][0], truth["a"][2], truth["b"][1]]))


def test_a_map_of_an_older_writer_is_read(tmp_path: Path):
    volume = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    write_old_mrc(tmp_path / "old.mrc", volume, voxel=2.5)
    with pytest.warns(InputWarning, match="no 'MAP ' id string and machine stamp"):
        data, voxel = read_map(tmp_path / "old.mrc")
    np.testing.assert_array_equal(data, volume)
    assert voxel == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("truncated", "is it cut short"),
        ("garbage", "not a readable MRC file"),
    ],
)
def test_broken_files_are_still_refused(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.mrc"
    if content == "truncated":
        write_old_mrc(path, np.zeros((8, 8, 8), np.float32))
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes())
    with pytest.raises(InputError, match=message):
        read_map(path)


def test_header_pixel_size_1_is_taken_as_not_set(tmp_path: Path):
    stacks_of_old_writer(tmp_path, voxel=1.0, map_id=b"MAP ", machst=b"DA\0\0")
    table = read_particles(files.write_star31(tmp_path))  # 1.6 and 2.0 Å
    with pytest.warns(InputWarning, match="1.0 Å and 1 other stack.*usual value for 'not set'"):
        ParticleImages(table).close()


def test_header_pixel_size_0_is_taken_as_not_set_with_a_warning(tmp_path: Path, recwarn):
    stacks_of_old_writer(tmp_path, voxel=0.0, map_id=b"MAP ", machst=b"DA\0\0")
    ParticleImages(read_particles(files.write_star31(tmp_path))).close()
    warned = [str(w.message) for w in recwarn if issubclass(w.category, InputWarning)]
    assert len(warned) == 1, warned
    assert "pixel size 0.0 Å and 1 other stack(s), 'not set'" in warned[0]


def test_a_real_pixel_size_disagreement_is_an_error_unless_ignored(tmp_path: Path, capsys):
    stacks_of_old_writer(tmp_path, voxel=1.3, map_id=b"MAP ", machst=b"DA\0\0")
    star = files.write_star31(tmp_path)
    table = read_particles(star)
    with pytest.raises(InputError, match=r"1\.3000 Å disagrees with 1\.6000 Å.*ignore-stack-pixel"):
        ParticleImages(table)
    ParticleImages(table, check_pixel_size=False).close()
    out = tmp_path / "out.cs"
    assert convert_main([str(star), str(out)]) == 2
    assert "header.voxel_size" in capsys.readouterr().err and not out.exists()
    assert convert_main([str(star), str(out), "--ignore-stack-pixel-size"]) == 0
    np.testing.assert_allclose(Dataset.load(out)["blob/psize_A"], files.PIXEL_SIZES, rtol=1e-6)


STAR31_NO_BOX = files.STAR31.replace("_rlnImageSize #8\n", "").replace(
    "_rlnImageDimensionality #9", "_rlnImageDimensionality #8"
)
STAR31_NO_BOX = STAR31_NO_BOX.replace(" 1.6 16 2\n", " 1.6 2\n").replace(" 2.0 16 2\n", " 2.0 2\n")


@pytest.mark.parametrize("text", [files.STAR30, STAR31_NO_BOX], ids=["relion3.0", "3.1-no-box"])
@pytest.mark.parametrize("check", [True, False], ids=["checked", "no-check-stacks"])
def test_a_file_without_box_size_is_converted_with_the_stacks_box(
    tmp_path: Path, text: str, check: bool
):
    files.write_stacks(tmp_path, box=16)
    star = files.write_star31(tmp_path, text)
    assert read_particles(star).optics.image_size.tolist() == [0] * len(read_particles(star).optics)
    extra = [] if check else ["--no-check-stacks"]
    assert convert_main([str(star), str(tmp_path / "out.cs"), *extra]) == 0
    assert convert_main([str(star), str(tmp_path / "out.star"), *extra]) == 0
    cs = Dataset.load(tmp_path / "out.cs")  # cryosparc-tools reads what we wrote
    assert np.all(cs["blob/shape"] == 16)
    optics = starfile.read(tmp_path / "out.star")["optics"]
    assert optics["rlnImageSize"].tolist() == [16] * len(optics)


def test_no_box_and_no_stack_is_an_error_not_a_zero_box(tmp_path: Path, capsys):
    star = files.write_star31(tmp_path, STAR31_NO_BOX)  # no stacks written
    assert convert_main([str(star), str(tmp_path / "out.cs"), "--no-check-stacks"]) == 2
    err = capsys.readouterr().err
    assert "does not exist, and the file gives no box size" in err
    assert not (tmp_path / "out.cs").exists()


def test_stack_errors_of_a_cs_table_name_its_fields(tmp_path: Path):
    files.write_stacks(tmp_path, n_a=3, n_b=1)  # b.mrcs holds 1 image; the .cs asks for idx 1
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, files.cs_for_star31())
    table = read_particles(tmp_path / "p.cs")
    with pytest.raises(InputError, match=r"p.cs: blob/idx: row 3: blob/idx 1 is past the end"):
        ParticleImages(table)
    (tmp_path / "Stacks" / "b.mrcs").unlink()
    with pytest.raises(InputError, match=r"p.cs: blob/path: row 3: stack file .* does not exist"):
        ParticleImages(table)


def test_cli_prints_a_warning_as_one_line(tmp_path: Path):
    stacks_of_old_writer(tmp_path, voxel=1.0)
    star = files.write_star31(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cryotorch.cli.convert", str(star), str(tmp_path / "o.cs")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("cryotorch-convert: ") for line in lines)  # one line each
    warned = [line for line in lines if line.startswith("cryotorch-convert: warning: ")]
    assert [("older MRC writer" in w, "not set" in w) for w in warned] == [
        (True, False),  # a.mrcs
        (True, False),  # b.mrcs
        (False, True),  # both stacks' pixel size 1.0, in one line
    ]
    assert "Traceback" not in result.stderr


def test_classify_trusts_the_particle_files_pixel_size_when_told(tmp_path: Path):
    """Stacks whose header says 3.3 Å where the STAR says 3.0 Å: refused with a pointer to
    data.ignore_stack_pixel_size, which then classifies with the STAR's pixel size."""
    from tests.run_helpers import run_classify, simulate_two_blob_classes

    star = simulate_two_blob_classes(tmp_path / "data", 60, 1.0, seed=1)
    for stack in (tmp_path / "data").rglob("*.mrcs"):
        with mrcfile.open(stack, "r+") as mrc:
            mrc.voxel_size = 3.3
    fast = [
        "logger=none",
        "logger.quiet=true",
        "model.target_resolution=12",
        "optim.max_iterations=2",
    ]
    with pytest.raises(InputError, match=r"data\.ignore_stack_pixel_size=true"):
        run_classify(star, tmp_path / "refused", *fast)
    assert not (tmp_path / "refused").exists()
    summary = run_classify(star, tmp_path / "run", *fast, "data.ignore_stack_pixel_size=true")
    assert summary["iterations"] >= 1
    optics = starfile.read(tmp_path / "run" / "particles.star")["optics"]
    assert optics["rlnImagePixelSize"].tolist() == [3.0]


def test_relion_project_relative_stack_paths_are_found_from_a_job_folder(tmp_path: Path):
    """RELION writes rlnImageName relative to its project folder; the STAR file of a job sits
    two levels below it (Class3D/job012/). Found from any working directory."""
    project = tmp_path / "project"
    files.write_stacks(project / "Extract" / "job005")
    text = files.STAR31.replace("@Stacks/", "@Extract/job005/Stacks/")
    star = files.write_star31(project / "Class3D" / "job012", text, "run_it025_data.star")
    table = read_particles(star)
    assert table.image_path[0] == str(project / "Extract" / "job005" / "Stacks" / "a.mrcs")
    ParticleImages(table).close()


def test_a_missing_stack_names_the_data_dir_switch(tmp_path: Path):
    star = files.write_star31(tmp_path)  # no stacks
    with pytest.raises(InputError, match=r"a\.mrcs does not exist .*--data-dir.*data\.data_dir"):
        ParticleImages(read_particles(star))


def test_a_file_that_is_not_numpy_is_not_called_pickled(tmp_path: Path):
    path = tmp_path / "J5_particles.cs"
    path.write_bytes(files.cs_for_star31().tobytes())  # records without numpy's header
    with pytest.raises(InputError, match=r"not a cryoSPARC \.cs file: it starts with b'"):
        read_particles(path)


def test_particles_without_3d_alignment_are_told_what_is_needed(tmp_path: Path):
    d = files.cs_for_star31()
    keep = [n for n in d.dtype.names if not n.startswith("alignments3D/")]
    path = tmp_path / "J3_extracted_particles.cs"
    with open(path, "wb") as f:
        np.save(f, d[keep].copy())
    with pytest.raises(InputError, match=r"alignments3D/pose: .*no 3D alignment.*consensus"):
        read_particles(path)
