"""``cryotorch-convert`` says, in one line, which input columns or fields it did not carry.

The STAR input is written by hand as RELION 3.1's CtfRefine writes its particles (beam tilt,
Zernike terms and the magnification matrix in data_optics; micrograph name and coordinates
per particle); the .cs input is written by cryosparc-tools' ``Dataset`` with the field layout
of a cryoSPARC 3D classification output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryotorch.cli.convert import main, not_carried
from cryotorch.io import read_particles
from tests import files

CTF_REFINED_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
_rlnBeamTiltX #9
_rlnBeamTiltY #10
_rlnOddZernike #11
_rlnEvenZernike #12
_rlnMagMat00 #13
_rlnMagMat01 #14
_rlnMagMat10 #15
_rlnMagMat11 #16
opticsGroup1 1 300.0 2.7 0.1 1.6 16 2 0.21 -0.13 ODD EVEN 1.002 0.001 0.001 0.998

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnCoordinateX #3
_rlnCoordinateY #4
_rlnAngleRot #5
_rlnAngleTilt #6
_rlnAnglePsi #7
_rlnOriginXAngst #8
_rlnOriginYAngst #9
_rlnDefocusU #10
_rlnDefocusV #11
_rlnDefocusAngle #12
_rlnOpticsGroup #13
000001@Stacks/a.mrcs mic1.mrc 1024.0 2048.0 10.0 20.0 30.0 1.6 -3.2 12000.0 11500.0 45.0 1
000003@Stacks/a.mrcs mic1.mrc 300.5 77.0 -120.0 100.0 -60.0 0.0 0.8 15000.0 14800.0 -30.0 1
""".replace("ODD", "[0.0021,-0.0013,0.0004,0.0001,0.0,0.0]").replace(
    "EVEN", "[0.0,-0.12,0.03,0.0,0.0,0.01,0.0,0.0,0.0]"
)  # RELION writes the Zernike coefficients as one [c0,c1,...] value
CTF_REFINED_EXTRAS = [
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMicrographName",
    "rlnCoordinateX",
    "rlnCoordinateY",
]


def run(argv: list[object], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("cryotorch-convert: note:")]


def test_star_to_cs_names_the_star_columns_it_drops(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    star = files.write_star31(tmp_path, CTF_REFINED_31)
    code, err = run([star, tmp_path / "out.cs"], capsys)
    assert code == 0
    (note,) = notes(err)
    head = f"cryotorch-convert: note: not carried into {tmp_path / 'out.cs'} ("
    assert note.startswith(head)
    assert note.split("): ", 1)[1].split(", ") == CTF_REFINED_EXTRAS


def _classification_cs(path: Path) -> None:
    """``files.cs_for_star31``'s particles as a cryoSPARC 3D classification (3 classes) with
    picking locations and higher-order CTF terms, saved by cryosparc-tools."""
    dataset = pytest.importorskip("cryosparc.dataset")
    raw = files.cs_for_star31()
    spec = []
    for name in raw.dtype.names[1:]:  # Dataset makes the uid
        base = "O" if name == "blob/path" else raw.dtype.fields[name][0].base.str
        shape = raw[name].shape[1:]
        spec.append((name, base, shape) if shape else (name, base))
    spec += [
        ("ctf/tilt_A", "<f4", (2,)),
        ("ctf/trefoil_A", "<f4", (2,)),
        ("location/micrograph_uid", "<u8"),
        ("location/micrograph_path", "O"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
        *(
            (f"alignments_class_{k}/{f}", "<f4")
            for k in range(3)
            for f in ("class_posterior", "error", "cross_cor")
        ),
    ]
    d = dataset.Dataset.allocate(3, spec)
    for name in raw.dtype.names:
        if name != "uid":
            d[name] = raw[name] if name != "blob/path" else [p.decode() for p in raw[name]]
    d["ctf/tilt_A"] = [[0.1, -0.2]] * 3
    d["location/micrograph_path"] = ["J2/motioncorrected/mic1.mrc"] * 3
    d["location/center_x_frac"] = [0.25, 0.5, 0.75]
    d.save(path)


def test_cs_to_star_names_the_cs_fields_it_drops(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    _classification_cs(tmp_path / "J9_particles.cs")
    code, err = run([tmp_path / "J9_particles.cs", tmp_path / "out.star"], capsys)
    assert code == 0
    (note,) = notes(err)
    assert "(cryotorch has no STAR column for these .cs fields): " in note
    dropped = note.split("): ", 1)[1].split(", ")
    assert sorted(dropped) == sorted(
        [
            "uid",
            "blob/sign",
            "ctf/tilt_A",
            "ctf/trefoil_A",
            "location/*",
            "alignments_class_0..2/*",
        ]
    )


def test_cs_to_relion30_also_drops_the_box_and_exposure_groups(tmp_path: Path):
    with open(tmp_path / "p.cs", "wb") as f:
        raw = files.cs_for_star31()
        np.save(f, raw)
    t = read_particles(tmp_path / "p.cs")
    assert not_carried(t, tmp_path / "o.star") == ["uid", "blob/sign"]
    assert not_carried(t, tmp_path / "o.star", "3.0") == ["uid", "blob/shape", "blob/sign"]


def test_relion31_to_30_names_the_optics_columns_it_drops(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    star = files.write_star31(tmp_path)
    code, err = run([star, tmp_path / "old.star", "--star-version", "3.0"], capsys)
    assert code == 0
    (note,) = notes(err)
    assert note.endswith(
        "(a RELION 3.0 file has no optics block): "
        "rlnOpticsGroup, rlnMicrographOriginalPixelSize, rlnImageSize"
    )


@pytest.mark.parametrize(
    ("text", "output", "args"),
    [
        (None, "out.cs", []),  # only columns a .cs has fields for
        (files.STAR31, "out.star", []),  # same version: every column kept
        (files.STAR30, "out.star", []),  # 3.0 -> 3.1: optics columns move, none dropped
    ],
)
def test_nothing_dropped_prints_no_note(tmp_path: Path, capsys, text, output, args):
    files.write_stacks(tmp_path)
    if text is None:
        text = files.star31_text(
            [(1, 1.6, 300.0, 2.7, 0.1), (2, 2.0, 200.0, 1.4, 0.07)],
            [("Stacks/a.mrcs", 1, 1), ("Stacks/b.mrcs", 2, 2)],
            subsets=[1, 2],
        )
    star = files.write_star31(tmp_path, text)
    code, err = run([star, tmp_path / "o" / output, *args], capsys)
    assert code == 0
    assert notes(err) == []
    assert (tmp_path / "o" / output).is_file()


def test_cs_to_cs_prints_no_note(tmp_path: Path, capsys):
    files.write_stacks(tmp_path)
    _classification_cs(tmp_path / "J9_particles.cs")
    code, err = run([tmp_path / "J9_particles.cs", tmp_path / "copy.cs"], capsys)
    assert code == 0
    assert notes(err) == []
