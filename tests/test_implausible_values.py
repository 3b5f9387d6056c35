"""Values no real data set has are refused when the file is read, naming the file, the field
in the file's own vocabulary and the row (or optics group), before one bad particle can turn a
run's posteriors into NaN. The files are tests/files.py's hand-written STAR and .cs, mutated."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryotorch.errors import InputError
from cryotorch.io import ParticleImages, read_particles
from cryotorch.io.checks import RANGES
from tests import files

# (column as in STAR31's header, 0-based data column, row to spoil (optics rows are 0/1),
#  block, bad value, the message's field and place)
OPTICS_COLUMNS = {"rlnVoltage": 3, "rlnSphericalAberration": 4, "rlnAmplitudeContrast": 5,
                  "rlnImagePixelSize": 6}  # fmt: skip
PARTICLE_COLUMNS = {"rlnDefocusU": 6, "rlnDefocusV": 7, "rlnCtfBfactor": None,
                    "rlnCtfScalefactor": None}  # fmt: skip


def star_with(column: str, value: str, row: int = 1) -> str:
    """STAR31 with ``column`` of (optics or particle) row ``row`` set to ``value``. The B-factor
    and scale factor, which STAR31 lacks, are added as columns (0 and 1 in the other rows)."""
    lines = files.STAR31.strip("\n").splitlines()
    optics_rows = [i for i, line in enumerate(lines) if line.startswith("opticsGroup")]
    particle_rows = [i for i, line in enumerate(lines) if "@Stacks/" in line]
    if column in OPTICS_COLUMNS:
        i = optics_rows[row - 1]
        fields = lines[i].split()
        fields[OPTICS_COLUMNS[column]] = value
        lines[i] = " ".join(fields)
    elif PARTICLE_COLUMNS[column] is not None:
        i = particle_rows[row - 1]
        fields = lines[i].split()
        fields[PARTICLE_COLUMNS[column]] = value
        lines[i] = " ".join(fields)
    else:
        header = lines.index("_rlnMicrographName #13")
        lines.insert(header + 1, f"_{column} #14")
        default = "0.0" if column == "rlnCtfBfactor" else "1.0"
        for k, i in enumerate(particle_rows, start=1):
            lines[i + 1] += f" {value if k == row else default}"
    return "\n".join(lines) + "\n"


CASES = [
    ("rlnVoltage", "0", 2, r"data_optics: rlnVoltage: optics group 2: 0 kV is not a plausible"),
    ("rlnVoltage", "-300", 1, r"data_optics: rlnVoltage: optics group 1: -300 kV"),
    ("rlnAmplitudeContrast", "1.5", 1, r"rlnAmplitudeContrast: optics group 1: 1.5 is not"),
    ("rlnSphericalAberration", "-2.7", 2, r"rlnSphericalAberration: optics group 2: -2.7 mm"),
    ("rlnImagePixelSize", "0", 1, r"rlnImagePixelSize: optics group 1: 0 Å .*expected \(0, 100\]"),
    ("rlnImagePixelSize", "-1.6", 1, r"rlnImagePixelSize: optics group 1: -1.6 Å"),
    ("rlnDefocusU", "1e9", 3, r"particles\.star: rlnDefocusU: row 3: 1e\+09 Å"),
    ("rlnDefocusV", "-5e6", 2, r"rlnDefocusV: row 2: -5e\+06 Å"),
    ("rlnCtfBfactor", "-1e6", 2, r"rlnCtfBfactor: row 2: -1e\+06 Å² is not a plausible CTF B"),
    ("rlnCtfScalefactor", "1e30", 1, r"rlnCtfScalefactor: row 1: 1e\+30 is not a plausible"),
    ("rlnCtfScalefactor", "0", 3, r"rlnCtfScalefactor: row 3: 0 is not a plausible"),
]


@pytest.mark.parametrize(("column", "value", "row", "message"), CASES)
def test_implausible_star_values_are_refused(
    tmp_path: Path, column: str, value: str, row: int, message: str
):
    star = files.write_star31(tmp_path, star_with(column, value, row))
    with pytest.raises(InputError, match=message):
        read_particles(star)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ctf/accel_kv", 0.0, r"p\.cs: ctf/accel_kv: row 1: 0 kV"),
        ("ctf/amp_contrast", 2.0, r"ctf/amp_contrast: row 1: 2 is not"),
        ("blob/psize_A", -1.0, r"blob/psize_A: row 1: -1 Å"),
        ("ctf/df1_A", 3e6, r"ctf/df1_A: row 1: 3e\+06 Å"),
    ],
)
def test_implausible_cs_values_are_refused(tmp_path: Path, field: str, value, message: str):
    data = files.cs_for_star31()
    data[field][0] = value
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, data)
    with pytest.raises(InputError, match=message):
        read_particles(tmp_path / "p.cs")


def _save_cs(path: Path, data: np.ndarray) -> Path:
    with open(path, "wb") as f:
        np.save(f, data)
    return path


def _with_field(data: np.ndarray, name: str, dtype, values) -> np.ndarray:
    """``data`` with field ``name`` replaced by one of another dtype (or ``(dtype, shape)``)."""
    new = (name, *dtype) if isinstance(dtype, tuple) else (name, dtype)
    descr = [f if f[0] != name else new for f in data.dtype.descr]
    out = np.zeros(len(data), dtype=descr)
    for n in data.dtype.names:
        if n != name:
            out[n] = data[n]
    out[name] = values
    return out


@pytest.mark.parametrize(
    ("name", "dtype", "values", "message"),
    [
        ("blob/idx", "<i4", [0, -1, 1], r"blob/idx: row 2: -1 is negative"),
        ("blob/shape", "<u4", [16, 16, 16], r"blob/shape: has 1 number\(s\) per particle"),
        ("alignments3D/pose", "<f4", [0.1, 0.2, 0.3], r"alignments3D/pose: has 1 number"),
        ("blob/idx", "<f4", [0.0, 2.0, 1.0], r"blob/idx: expected integers"),
    ],
)
def test_malformed_cs_fields_are_refused(tmp_path: Path, name, dtype, values, message):
    data = _with_field(files.cs_for_star31(), name, dtype, values)
    with pytest.raises(InputError, match=message):
        read_particles(_save_cs(tmp_path / "p.cs", data))


# Found by tests/test_generated_bad_input.py (issue 21): read as numbers, arrays of the wrong
# shape or half-sets; a traceback (UnicodeDecodeError, a 2-D path array) for the last two.
@pytest.mark.parametrize(
    ("name", "dtype", "values", "message"),
    [
        ("ctf/df_angle_rad", "<U8", ["0.1", "0.2", "0.3"], r"expected numbers, got .* <U8"),
        ("ctf/df1_A", "<c8", [12000, 15000, 20000], r"ctf/df1_A: expected numbers, got .*complex"),
        ("ctf/df2_A", ("<f4", (1,)), 11500, r"ctf/df2_A: has 1 number\(s\) .*\(shape \(1,\)\)"),
        ("alignments3D/split", "<u4", [0, 7, 1], r"split: row 2: 7 is not a half-set: expected 0"),
        ("alignments3D/split", "<f4", [0, 1, 0], r"alignments3D/split: expected integers"),
        ("alignments3D/psize_A", "<f4", [1.6, -1.6, 2], r"psize_A: row 2: -1\.6 Å is not a plaus"),
        ("alignments3D/psize_A", "<f4", [0, 1.6, 2], r"alignments3D/psize_A: row 1: 0 Å is not"),
        ("blob/path", "<f8", [1, 2, 3], r"blob/path: expected paths \(text\), got float64"),
        (
            "blob/path",
            "S16",
            [b"\xff\xfe", b"a", b"b"],
            r"row 1: b'\\xff\\xfe' is not a UTF-8 path",
        ),
        ("blob/path", ("S16", (2,)), b"Stacks/a.mrcs", r"blob/path: has 2 path\(s\) per particle"),
        # Cast to int64 as they were: a ComplexWarning for the first, 16 for the others.
        ("blob/shape", ("<c8", (2,)), 16, r"blob/shape: expected numbers, got .*complex64"),
        ("blob/shape", ("S8", (2,)), b"16", r"blob/shape: expected numbers, got .*S8"),
        ("blob/shape", ("<f4", (2,)), 16.5, r"blob/shape: row 1: expected a box size in pix"),
    ],
)
def test_cs_fields_read_as_others_are_refused(tmp_path: Path, name, dtype, values, message):
    data = _with_field(files.cs_for_star31(), name, dtype, values)
    with pytest.raises(InputError, match=message):
        read_particles(_save_cs(tmp_path / "p.cs", data))


def test_a_duplicate_star_column_is_refused(tmp_path: Path):
    text = files.STAR31.replace(
        "_rlnMicrographName #13", "_rlnMicrographName #13\n_rlnDefocusU #14"
    )
    text = re.sub(r"(mic[12]\.mrc)\n", r"\1 13000.0\n", text)
    with pytest.raises(InputError, match="data_particles: column rlnDefocusU appears twice"):
        read_particles(files.write_star31(tmp_path, text))


def test_a_misnamed_particle_block_of_a_31_file_is_named(tmp_path: Path):
    text = files.STAR31.replace("data_particles", "data_parts")
    with pytest.raises(InputError, match=r"data_parts: a RELION 3\.1 file .*data_particles"):
        read_particles(files.write_star31(tmp_path, text))


def test_an_origin_outside_the_box_is_refused(tmp_path: Path):
    files.write_stacks(tmp_path)  # box 16 at 1.6 Å: 25.6 Å
    text = files.STAR31.replace(" 1.6 -3.2 12000.0", " 30.0 -3.2 12000.0")
    table = read_particles(files.write_star31(tmp_path, text))
    with pytest.raises(InputError, match=r"rlnOriginXAngst/YAngst: row 1: origin \[30.0, -3.2\]"):
        ParticleImages(table)


def test_an_image_scaled_past_float_range_is_refused_when_read(tmp_path: Path):
    import mrcfile

    files.write_stacks(tmp_path)
    with mrcfile.open(tmp_path / "Stacks" / "a.mrcs", "r+") as mrc:
        mrc.data[2] *= 1e37
    with ParticleImages(read_particles(files.write_star31(tmp_path))) as images:
        images.read(np.array([0]))  # image 1 is fine
        with pytest.raises(InputError, match=r"a\.mrcs: image 3: holds a pixel value of"):
            images.read(np.array([0, 1]))


# Any value of any checked field: read and within range, or refused with a one-line message
# that names the file and the field; never another exception.
FIELDS = [*OPTICS_COLUMNS, *PARTICLE_COLUMNS]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, -1e300, 1e308]),
    st.integers(-(10**12), 10**12).map(float),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(column=st.sampled_from(FIELDS), value=numbers, row=st.integers(1, 2))
def test_any_value_is_read_in_range_or_refused_naming_the_field(
    tmp_path: Path, column: str, value: float, row: int
):
    star = files.write_star31(tmp_path, star_with(column, repr(value), row))
    try:
        table = read_particles(star)
    except InputError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith(str(star)) and column in text
        return
    for quantity, (low, high, inclusive, _, _) in RANGES.items():
        values = getattr(table, quantity)
        assert np.all(values >= low if inclusive else values > low), quantity
        assert np.all(values <= high), quantity


def star31_with(block: str, column: str, row: int, value: str, text: str = files.STAR31) -> str:
    """``text`` (STAR31) with ``column`` of row ``row`` (1-based) of ``data_<block>`` set to
    ``value``."""
    lines, current, columns, rows = text.split("\n"), None, [], 0
    for i, line in enumerate(lines):
        if line.startswith("data_"):
            current, columns, rows = line[5:], [], 0
        elif line.startswith("_"):
            columns.append(line.split()[0][1:])
        elif current == block and line.strip() and not line.startswith(("#", "loop_")):
            rows += 1
            if rows == row:
                fields = line.split()
                fields[columns.index(column)] = value
                lines[i] = " ".join(fields)
    return "\n".join(lines)


# Found by tests/test_generated_bad_input.py (issue 21): values that were read as others, or
# that the engine ignored without a word.
@pytest.mark.parametrize(
    ("block", "column", "row", "value", "message"),
    [
        # was read as optics group 1
        ("particles", "rlnOpticsGroup", 1, "1.5", r"rlnOpticsGroup: row 1: optics group 1\.5 is"),
        # was named 'optics group -9223372036854775808' (int64 wraps)
        ("particles", "rlnOpticsGroup", 2, "1e19", r"row 2: optics group 1e\+19 is not in"),
        # was a 'half-set' the engine replaced with its own
        ("particles", "rlnRandomSubset", 2, "3", r"rlnRandomSubset: row 2: 3 is not a half-set"),
        ("particles", "rlnRandomSubset", 3, "1.5", r"rlnRandomSubset: row 3: 1\.5 is not a half"),
        # was read as a box of 16, and of -16
        ("optics", "rlnImageSize", 1, "16.5", r"rlnImageSize: optics group 1: 16\.5 is not a box"),
        ("optics", "rlnImageSize", 2, "-16", r"rlnImageSize: optics group 2: -16 is not a box"),
    ],
)
def test_values_read_as_others_are_refused(tmp_path: Path, block, column, row, value, message):
    star = files.write_star31(tmp_path, star31_with(block, column, row, value))
    with pytest.raises(InputError, match=message):
        read_particles(star)


def test_a_random_subset_of_zeros_is_still_read_as_not_given(tmp_path: Path):
    text = files.STAR31
    for row in (1, 2, 3):
        text = star31_with("particles", "rlnRandomSubset", row, "0", text)
    assert read_particles(files.write_star31(tmp_path, text)).random_subset.tolist() == [0] * 3


def test_image_indices_past_int64_are_refused(tmp_path: Path):
    """Found by the generated suite: an rlnImageName index of 1e20 wrapped as int64 (the message
    named 'image -9223372036854775807', with numpy's overflow warnings on stderr); a uint64
    blob/idx of 2**64 - 1 became -1 and read the stack's last image without a word."""
    files.write_stacks(tmp_path)
    text = files.STAR31.replace("000003@Stacks/a.mrcs", "99999999999999999999@Stacks/a.mrcs")
    with pytest.raises(InputError, match=r"rlnImageName: row 2: expected a 1-based integer"):
        read_particles(files.write_star31(tmp_path, text))
    data = _with_field(files.cs_for_star31(), "blob/idx", "<u8", [0, 2**64 - 1, 1])
    with pytest.raises(InputError, match=r"blob/idx: row 2: 18446744073709551615 is too large"):
        read_particles(_save_cs(tmp_path / "p.cs", data))


def test_angles_past_float32s_range_are_refused(tmp_path: Path):
    """Found by the generated suite: a defocus angle or phase shift of 1e38 rad (5.7e39°) is
    inf in the float32 CTF, and cos(inf) made every posterior NaN (exit 0)."""
    text = star31_with("particles", "rlnDefocusAngle", 1, "1e308")
    with pytest.raises(InputError, match=r"rlnDefocusAngle: row 1: 1e\+308 ° is not a plausible"):
        read_particles(files.write_star31(tmp_path, text))
    data = files.cs_for_star31()
    data["ctf/phase_shift_rad"][1] = -1e38
    with pytest.raises(InputError, match=r"ctf/phase_shift_rad: row 2: -5\.72958e\+39 ° is not"):
        read_particles(_save_cs(tmp_path / "p.cs", data))


def test_every_optics_group_of_a_stack_is_checked_against_it(tmp_path: Path):
    """Found by the generated suite: a stack's header was checked against the optics group of
    its first particle only, so a later particle of another group in the same stack kept a
    box (blob/shape 2**32 - 1) or pixel size (2.0 Å for a 1.6 Å stack) the stack has not."""
    files.write_stacks(tmp_path)
    data = files.cs_for_star31()
    data["blob/shape"][1] = [16, 2**32 - 1]  # row 2: a.mrcs, as row 1
    table = read_particles(_save_cs(tmp_path / "p.cs", data))
    with pytest.raises(InputError, match=r"a\.mrcs: header\.nx/ny: .* says 4294967295 \(blob/sh"):
        ParticleImages(table)
    text = star31_with("particles", "rlnOpticsGroup", 2, "2")  # group 2 (2.0 Å) in a.mrcs
    with pytest.raises(InputError, match=r"a\.mrcs: header\.voxel_size: pixel size 1\.6000 Å "
                       r"disagrees with 2\.0000 Å in .*particles\.star \(row 2;"):  # fmt: skip
        ParticleImages(read_particles(files.write_star31(tmp_path, text)))
