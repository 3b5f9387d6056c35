"""``cryotorch-convert``: conversions, the demo, and refusal of bad input with nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotorch.cli.convert import main
from cryotorch.io import read_particles
from tests import files


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_star_to_cs_to_star(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    star = files.write_star31(tmp_path)
    assert run([star, tmp_path / "out" / "p.cs"], capsys)[0] == 0
    assert (
        run(
            [tmp_path / "out" / "p.cs", tmp_path / "out" / "p.star", "--star-version", "3.0"],
            capsys,
        )[0]
        == 0
    )
    a, b = read_particles(star), read_particles(tmp_path / "out" / "p.star")
    np.testing.assert_array_equal(a.image_path, b.image_path)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=1e-6)
    np.testing.assert_allclose(a.origin_angstrom, b.origin_angstrom, atol=1e-5)


def test_demo_runs_as_a_console_script(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "cryotorch.cli.convert", "--demo-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "round trip OK" in result.stdout
    assert (tmp_path / "particles.cs").is_file() and (tmp_path / "particles_from_cs.star").is_file()


def _missing_column(tmp: Path) -> Path:
    files.write_stacks(tmp)
    return files.write_star31(tmp, files.STAR31.replace("_rlnDefocusV #8", "_rlnDefocusVee #8"))


def _index_past_end(tmp: Path) -> Path:
    files.write_stacks(tmp, n_b=1)
    return files.write_star31(tmp)


def _missing_stack(tmp: Path) -> Path:
    files.write_stacks(tmp)
    (tmp / "Stacks" / "a.mrcs").unlink()
    return files.write_star31(tmp)


def _pixel_size(tmp: Path) -> Path:
    files.write_stacks(tmp)
    return files.write_star31(
        tmp, files.STAR31.replace("300.0 2.7 0.1 1.6 16 2", "300.0 2.7 0.1 1.7 16 2")
    )


def _mrc_mode(tmp: Path) -> Path:
    import mrcfile

    files.write_stacks(tmp)
    with mrcfile.new(tmp / "Stacks" / "b.mrcs", overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 16, 16), dtype=np.complex64))
    return files.write_star31(tmp)


def _empty_table(tmp: Path) -> Path:
    files.write_stacks(tmp)
    lines = files.STAR31.strip().splitlines()
    return files.write_star31(tmp, "\n".join(lines[:-3]) + "\n")


def _pickled_cs(tmp: Path) -> Path:
    data = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "O")])
    data["blob/path"] = ["a.mrcs", "b.mrcs"]
    np.save(tmp / "p.npy", data, allow_pickle=True)
    return (tmp / "p.npy").rename(tmp / "p.cs")


def _not_star(tmp: Path) -> Path:
    (tmp / "p.star").write_text("this is a text file\nnot a STAR file\n")
    return tmp / "p.star"


def _bad_number(tmp: Path) -> Path:
    files.write_stacks(tmp)
    return files.write_star31(tmp, files.STAR31.replace("-120.0 100.0", "-120.0 abc"))


def _bad_optics_group(tmp: Path) -> Path:
    files.write_stacks(tmp)
    return files.write_star31(tmp, files.STAR31.replace("120.0 0.0 2 1 mic2", "120.0 0.0 3 1 mic2"))


@pytest.mark.parametrize(
    ("make", "output", "pattern"),
    [
        (
            _missing_column,
            "o.cs",
            r"particles\.star: data_particles: missing required column\(s\) rlnDefocusV",
        ),
        (
            _index_past_end,
            "o.cs",
            r"particles\.star: rlnImageName: row 3: image 2 is past the end of .*b\.mrcs",
        ),
        (
            _missing_stack,
            "o.cs",
            r"particles\.star: rlnImageName: row 1: stack file .*a\.mrcs does not exist",
        ),
        (
            _pixel_size,
            "o.cs",
            r"a\.mrcs: header\.voxel_size: pixel size 1\.6000 Å disagrees with 1\.7000 Å",
        ),
        (_mrc_mode, "o.cs", r"b\.mrcs: header\.mode: MRC mode 4 is not supported"),
        (_empty_table, "o.cs", r"particles\.star: data_particles: the table is empty"),
        (_pickled_cs, "o.star", r"p\.cs: has an object \(pickled\) field"),
        (_not_star, "o.cs", r"p\.star: not a STAR file"),
        (
            _bad_number,
            "o.cs",
            r"particles\.star: rlnAngleTilt: row 2: expected a finite number, got 'abc'",
        ),
        (
            _bad_optics_group,
            "o.cs",
            r"particles\.star: rlnOpticsGroup: row 3: optics group 3 is not in data_optics",
        ),
    ],
)
def test_bad_input_is_refused_by_name_and_writes_nothing(
    tmp_path: Path, capsys, make, output, pattern
):
    source = make(tmp_path)
    out_dir = tmp_path / "out"
    code, text = run([source, out_dir / output], capsys)
    assert code == 2
    assert re.search(pattern, text), text
    assert "Traceback" not in text
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("value", ["inf", "1e308", "0", "-1.6", "nan"])
def test_a_pixel_size_no_data_set_has_is_refused_as_the_option(tmp_path: Path, capsys, value):
    """``--pixel-size`` out of the readers' range is one line naming the option: it was
    blamed on the file, as its rlnImagePixelSize (a RELION 3.0 file has none), after a
    RuntimeWarning line (issue 21)."""
    files.write_stacks(tmp_path)
    (tmp_path / "p.star").write_text(files.STAR30)
    code, text = run(
        [tmp_path / "p.star", tmp_path / "out" / "o.star", "--pixel-size", value], capsys
    )
    assert code == 2
    assert text.splitlines() == [
        f"cryotorch-convert: error: --pixel-size: {float(value)} Å is not a plausible pixel "
        "size: expected (0, 100] Å"
    ]
    assert not (tmp_path / "out").exists()
