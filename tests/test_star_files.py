"""STAR files cryotorch must refuse, warn about or name in the file's own terms (issue 19).

The files are ``tests/files.py``'s hand-written RELION files, edited as RELION would have
written them (an extra optics column, RELION 3.0 origin names, a 3.0 block called
``data_images``), and the head of a RELION ``run_model.star``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryotorch.cli.convert import main
from cryotorch.errors import InputError, InputWarning
from cryotorch.io import read_particles, write_particles
from tests import files

PREMULTIPLIED = "the images are CTF-premultiplied"

# The head of a RELION 3.1 run_it025_model.star (class3D, two classes): key/value pairs, then
# the class table; no particles.
MODEL_GENERAL = """
# version 30001

data_model_general

_rlnReferenceDimensionality                        3
_rlnDataDimensionality                             2
_rlnOriginalImageSize                             16
_rlnCurrentResolution                       8.533333
_rlnCurrentImageSize                              16
_rlnPaddingFactor                           2.000000
_rlnIsHelix                                        0
_rlnNrClasses                                      2
_rlnNrBodies                                       1
_rlnNrGroups                                       1
_rlnTau2FudgeFactor                         4.000000
_rlnPixelSize                               1.600000
"""
MODEL_CLASSES = """
# version 30001

data_model_classes

loop_
_rlnReferenceImage #1
_rlnClassDistribution #2
_rlnAccuracyRotations #3
_rlnAccuracyTranslationsAngst #4
_rlnEstimatedResolution #5
_rlnOverallFourierCompleteness #6
_rlnClassPriorOffsetX #7
_rlnClassPriorOffsetY #8
Class3D/job010/run_it025_class001.mrc 0.600000 4.500000 1.700000 8.533333 1.000000 0.000000 0.000000
Class3D/job010/run_it025_class002.mrc 0.400000 5.100000 1.900000 9.142857 1.000000 0.000000 0.000000
"""


def _optics_column(text: str, column: str, values: tuple[str, str]) -> str:
    """``files.STAR31`` with one more optics column, ``values`` for groups 1 and 2."""
    text = text.replace("_rlnImageDimensionality #9", f"_rlnImageDimensionality #9\n_{column} #10")
    text = text.replace("1.6 16 2\n", f"1.6 16 2 {values[0]}\n")
    return text.replace("2.0 16 2\n", f"2.0 16 2 {values[1]}\n")


def _particle_column(text: str, after: str, column: str, values: tuple[str, str, str]) -> str:
    """``text`` (STAR31 or STAR30) with a particle column after ``after`` (its last column)."""
    number = int(re.search(rf"_{after} #(\d+)", text).group(1)) + 1
    text = text.replace(f"_{after} #{number - 1}", f"_{after} #{number - 1}\n_{column} #{number}")
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if "@Stacks/" in line]
    for i, value in zip(rows, values, strict=True):
        lines[i] += f" {value}"
    return "\n".join(lines)


def _read(tmp_path: Path, text: str, name: str = "particles.star"):
    return read_particles(files.write_star31(tmp_path, text, name))


# --- 1. CTF-premultiplied and 3D images are refused ------------------------------------------


def test_ctf_premultiplied_optics_group_is_refused_naming_the_group(tmp_path: Path):
    text = _optics_column(files.STAR31, "rlnCtfDataAreCtfPremultiplied", ("0", "1"))
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert err.value.field == "data_optics: rlnCtfDataAreCtfPremultiplied"
    assert err.value.problem.startswith(f"optics group 2: {PREMULTIPLIED}")


def test_ctf_premultiplied_particle_column_of_a_relion30_file_is_refused(tmp_path: Path):
    text = _particle_column(
        files.STAR30, "rlnMicrographName", "rlnCtfDataAreCtfPremultiplied", ("0", "0", "1")
    )
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert err.value.field == "data_: rlnCtfDataAreCtfPremultiplied"  # the block as named
    assert err.value.problem.startswith(f"row 3: {PREMULTIPLIED}")


def test_subtomograms_are_refused_naming_the_group(tmp_path: Path):
    text = files.STAR31.replace("2.0 16 2\n", "2.0 16 3\n")  # group 2: rlnImageDimensionality 3
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert str(err.value).endswith(
        "data_optics: rlnImageDimensionality: optics group 2: 3D images (subtomograms); "
        "cryotorch classifies 2D particle images"
    )


def test_not_premultiplied_2d_images_are_read(tmp_path: Path):
    text = _optics_column(files.STAR31, "rlnCtfDataAreCtfPremultiplied", ("0", "0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        t = _read(tmp_path, text)
    np.testing.assert_allclose(t.origin_angstrom, files.ORIGINS_A)


def test_cli_refuses_premultiplied_images_in_one_line_and_writes_nothing(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    text = _optics_column(files.STAR31, "rlnCtfDataAreCtfPremultiplied", ("1", "1"))
    star = files.write_star31(tmp_path, text)
    code = main([str(star), str(tmp_path / "out" / "p.cs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        f"cryotorch-convert: error: {star}: data_optics: rlnCtfDataAreCtfPremultiplied: "
        f"optics group 1: {PREMULTIPLIED}"
    )
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --- 2. RELION 3.0 pixel origins in a 3.1 file -----------------------------------------------

PIXEL_ORIGINS_31 = (
    files.STAR31.replace("_rlnOriginXAngst", "_rlnOriginX")
    .replace("_rlnOriginYAngst", "_rlnOriginY")
    .replace("1.6 -3.2 12000", "1.0 -2.0 12000")
    .replace("0.0 0.8 15000", "0.0 0.5 15000")
    .replace("-4.0 2.0 20000", "-2.0 1.0 20000")
)  # the origins of files.ORIGINS_A in pixels of 1.6, 1.6 and 2.0 Å


def test_pixel_origins_alone_are_converted_with_the_group_pixel_size(tmp_path: Path):
    with pytest.warns(InputWarning) as record:
        t = _read(tmp_path, PIXEL_ORIGINS_31)
    np.testing.assert_allclose(t.origin_angstrom, files.ORIGINS_A, atol=1e-12)
    (message,) = [str(w.message) for w in record if "rlnOriginX" in str(w.message)]
    assert "data_particles: rlnOriginX, rlnOriginY: " in message
    assert "converted to Å with each particle's optics-group pixel size" in message


def test_pixel_origins_next_to_angstrom_origins_are_ignored(tmp_path: Path):
    text = _particle_column(files.STAR31, "rlnMicrographName", "rlnOriginX", ("9", "9", "9"))
    text = _particle_column(text, "rlnOriginX", "rlnOriginY", ("9", "9", "9"))
    with pytest.warns(InputWarning, match=r"data_particles: rlnOriginX, rlnOriginY: .*ignored"):
        t = _read(tmp_path, text)
    np.testing.assert_allclose(t.origin_angstrom, files.ORIGINS_A)


def test_pixel_origins_are_written_back_as_angstrom_columns(tmp_path: Path):
    with pytest.warns(InputWarning):
        t = _read(tmp_path, PIXEL_ORIGINS_31)
    write_particles(t, tmp_path / "out.star")
    columns = list(starfile.read(tmp_path / "out.star", always_dict=True)["particles"].columns)
    assert columns[4:6] == ["rlnOriginXAngst", "rlnOriginYAngst"]  # where the pixel ones were
    assert "rlnOriginX" not in columns
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        back = read_particles(tmp_path / "out.star")
    np.testing.assert_allclose(back.origin_angstrom, files.ORIGINS_A, atol=1e-5)


def test_cli_prints_the_origin_warning_as_one_line(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    star = files.write_star31(tmp_path, PIXEL_ORIGINS_31)
    assert main([str(star), str(tmp_path / "p.cs")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "rlnOriginX" in line]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"cryotorch-convert: warning: {star}: data_particles: rlnOriginX, rlnOriginY: "
    )


# --- 3. Blocks named as the file names them --------------------------------------------------


def test_relion30_block_is_named_as_in_the_file(tmp_path: Path):
    text = files.STAR30.replace("data_\n", "data_images\n").replace("_rlnDefocusV #8", "_rlnDV #8")
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert str(err.value).endswith("data_images: missing required column(s) rlnDefocusV")


def test_empty_relion30_block_is_named_as_in_the_file(tmp_path: Path):
    lines = files.STAR30.replace("data_\n", "data_images\n").strip().splitlines()
    with pytest.raises(InputError) as err:
        _read(tmp_path, "\n".join(lines[:-3]) + "\n")
    assert "data_particles" not in str(err.value)
    assert str(err.value).endswith(
        "data_images: the table is empty: expected at least one particle"
    )


def test_relion30_optics_columns_missing_in_a_data_block(tmp_path: Path):
    text = files.STAR30.replace("_rlnVoltage #11", "_rlnVolts #11")
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert str(err.value).endswith("data_: missing required column(s) rlnVoltage")


def test_relion30_block_called_data_particles_is_read_as_30(tmp_path: Path):
    # RELION converts a file without data_optics as 3.0, whatever its block is called.
    t = _read(tmp_path, files.STAR30.replace("data_\n", "data_particles\n"))
    assert t.source.format == "star3.0"
    np.testing.assert_allclose(t.origin_angstrom, files.ORIGINS_A, atol=1e-12)


def test_two_relion30_particle_blocks_are_named(tmp_path: Path):
    text = files.STAR30 + files.STAR30.replace("data_\n", "data_more\n")
    with pytest.raises(InputError) as err:
        _read(tmp_path, text)
    assert err.value.field == "data_, data_more"


def test_key_value_only_star_is_a_star_file_without_particles(tmp_path: Path):
    with pytest.raises(InputError) as err:
        _read(tmp_path, MODEL_GENERAL, "run_model.star")
    assert err.value.problem.startswith(
        "a STAR file with no particle table (its blocks: data_model_general, with key/value "
        "pairs only)"
    )


def test_star_with_tables_but_no_particles_lists_its_blocks(tmp_path: Path):
    with pytest.raises(InputError) as err:
        _read(tmp_path, MODEL_GENERAL + MODEL_CLASSES, "run_model.star")
    assert err.value.problem.startswith(
        "a STAR file with no particle table (its blocks: data_model_general, data_model_classes);"
        " none has an rlnImageName column"
    )


@pytest.mark.parametrize("text", ["", "this is a text file\nnot a STAR file\n"])
def test_empty_or_garbage_is_not_a_star_file(tmp_path: Path, text: str):
    with pytest.raises(InputError, match=r"p\.star: not a STAR file"):
        _read(tmp_path, text, "p.star")


# --- 4. Rows with fewer or more values than columns (issue 21) -------------------------------
# Found by tests/test_generated_bad_input.py. starfile fills a short row's missing values with
# NaN from the right: a file cut in its last row, or a value deleted from a row, was read with
# a micrograph named 'nan' (and, for a value deleted mid-row, the row's later values under the
# wrong columns); pandas' message for a long row ended in a newline: two lines on stderr.
ROW_2 = "000003@Stacks/a.mrcs -120.0 100.0 -60.0 0.0 0.8 15000.0 14800.0 -30.0 90.0 1 2 mic1.mrc"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # cut short in its last row
            files.STAR31.rstrip("\n")[: -len(" mic2.mrc")],
            r"data_particles: row 3: no value in its last column rlnMicrographName \(nan, or "
            r"fewer values than the table's 13 columns\)",
        ),
        (
            files.STAR31.replace(ROW_2, ROW_2.rsplit(" ", 1)[0]),
            r"data_particles: row 2: no value in its last column rlnMicrographName",
        ),
        (  # a row longer than the first, or the first shorter than the next
            files.STAR31.replace(ROW_2, ROW_2 + " 7"),
            r"not a readable STAR file \(row 2 of a loop table has 14 values, its first row 13: "
            r"expected one value per column in every row\)$",
        ),
        (
            files.STAR31.replace("2.7 0.1 1.6 16 2", "2.7 0.1 1.6 16"),
            r"not a readable STAR file \(row 2 of a loop table has 9 values, its first row 8: "
            r"expected one value per column in every row\)$",
        ),
        (  # was "got np.float64(nan)"
            files.STAR31.replace(" 12000.0 11500.0", " nan 11500.0"),
            r"rlnDefocusU: row 1: expected a finite number, got nan$",
        ),
    ],
)
def test_rows_of_the_wrong_length_are_refused_in_one_line(tmp_path: Path, text: str, message):
    assert text != files.STAR31
    with pytest.raises(InputError, match=message) as err:
        _read(tmp_path, text)
    assert "\n" not in str(err.value)
