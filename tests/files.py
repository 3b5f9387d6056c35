"""Small particle files written by hand from the format documentation (not by cryotorch).

``STAR31`` and ``cs_for_star31`` describe the same three particles; the ``.cs`` values are
worked out here with scipy and plain arithmetic from the published conventions, so the paired
test checks the readers against an outside account of the formats, not against each other.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
from scipy.spatial.transform import Rotation

STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
opticsGroup1 1 0.8 300.0 2.7 0.1 1.6 16 2
opticsGroup2 2 0.5 200.0 1.4 0.07 2.0 16 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnPhaseShift #10
_rlnOpticsGroup #11
_rlnRandomSubset #12
_rlnMicrographName #13
000001@Stacks/a.mrcs 10.0 20.0 30.0 1.6 -3.2 12000.0 11500.0 45.0 0.0 1 1 mic1.mrc
000003@Stacks/a.mrcs -120.0 100.0 -60.0 0.0 0.8 15000.0 14800.0 -30.0 90.0 1 2 mic1.mrc
000002@Stacks/b.mrcs 0.0 170.0 175.0 -4.0 2.0 20000.0 19000.0 120.0 0.0 2 1 mic2.mrc
"""

# The same particles as RELION 3.0 writes them: optics per particle, origins in pixels,
# pixel size = rlnDetectorPixelSize (µm) * 1e4 / rlnMagnification.
STAR30 = """
data_

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginX #5
_rlnOriginY #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnPhaseShift #10
_rlnVoltage #11
_rlnSphericalAberration #12
_rlnAmplitudeContrast #13
_rlnDetectorPixelSize #14
_rlnMagnification #15
_rlnRandomSubset #16
_rlnMicrographName #17
000001@Stacks/a.mrcs 10.0 20.0 30.0 1.0 -2.0 12000.0 11500.0 45.0 0.0 300.0 2.7 0.1 8.0 50000 1 mic1.mrc
000003@Stacks/a.mrcs -120.0 100.0 -60.0 0.0 0.5 15000.0 14800.0 -30.0 90.0 300.0 2.7 0.1 8.0 50000 2 mic1.mrc
000002@Stacks/b.mrcs 0.0 170.0 175.0 -2.0 1.0 20000.0 19000.0 120.0 0.0 200.0 1.4 0.07 10.0 50000 1 mic2.mrc
"""

ANGLES = np.array([[10.0, 20.0, 30.0], [-120.0, 100.0, -60.0], [0.0, 170.0, 175.0]])
ORIGINS_A = np.array([[1.6, -3.2], [0.0, 0.8], [-4.0, 2.0]])
PIXEL_SIZES = np.array([1.6, 1.6, 2.0])


def cs_for_star31() -> np.ndarray:
    """The ``.cs`` rows of the three particles of ``STAR31`` (0-based ``blob/idx``)."""
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S16"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("blob/sign", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("alignments3D/split", "<u4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/psize_A", "<f4"),
    ]
    d = np.zeros(3, dtype=dtype)
    d["uid"] = [111, 222, 333]
    d["blob/path"] = [b"Stacks/a.mrcs", b"Stacks/a.mrcs", b"Stacks/b.mrcs"]
    d["blob/idx"] = [0, 2, 1]
    d["blob/shape"] = 16
    d["blob/psize_A"] = PIXEL_SIZES
    d["blob/sign"] = -1
    d["ctf/accel_kv"] = [300, 300, 200]
    d["ctf/cs_mm"] = [2.7, 2.7, 1.4]
    d["ctf/amp_contrast"] = [0.1, 0.1, 0.07]
    d["ctf/df1_A"] = [12000, 15000, 20000]
    d["ctf/df2_A"] = [11500, 14800, 19000]
    d["ctf/df_angle_rad"] = np.radians([45.0, -30.0, 120.0])
    d["ctf/phase_shift_rad"] = np.radians([0.0, 90.0, 0.0])
    d["alignments3D/split"] = [0, 1, 0]
    d["alignments3D/shift"] = ORIGINS_A / PIXEL_SIZES[:, None]
    # pyem/cryoDRGN: Rotation.from_rotvec(pose).as_euler("ZYZ") is RELION's (rot, tilt, psi).
    d["alignments3D/pose"] = Rotation.from_euler("ZYZ", ANGLES, degrees=True).as_rotvec()
    d["alignments3D/psize_A"] = PIXEL_SIZES
    return d


def write_stacks(folder: Path, n_a: int = 3, n_b: int = 2, box: int = 16) -> dict[str, np.ndarray]:
    """Write ``Stacks/a.mrcs`` (pixel 1.6 Å) and ``Stacks/b.mrcs`` (2.0 Å) of random images."""
    rng = np.random.default_rng(7)
    (folder / "Stacks").mkdir(parents=True, exist_ok=True)
    stacks = {}
    for name, n, psize in (("a", n_a, 1.6), ("b", n_b, 2.0)):
        data = rng.normal(size=(n, box, box)).astype(np.float32)
        with mrcfile.new(folder / "Stacks" / f"{name}.mrcs", overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
            mrc.voxel_size = psize
        stacks[name] = data
    return stacks


def write_star31(folder: Path, text: str = STAR31, name: str = "particles.star") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def star31_text(
    optics: list[tuple[int, float, float, float, float]],
    particles: list[tuple[str, int, int]],
    subsets: list[int] | None = None,
) -> str:
    """A RELION 3.1 particle STAR file written out by hand.

    ``optics``: ``(rlnOpticsGroup, rlnImagePixelSize, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast)`` per group (box 16); ``particles``: ``(stack, 1-based index,
    rlnOpticsGroup)`` per particle; ``subsets``: ``rlnRandomSubset`` per particle, or no column.
    """
    head = [
        "# version 30001",
        "",
        "data_optics",
        "",
        "loop_",
        *(
            f"_rln{c} #{i + 1}"
            for i, c in enumerate(
                "OpticsGroupName OpticsGroup ImagePixelSize ImageSize ImageDimensionality Voltage "
                "SphericalAberration AmplitudeContrast".split()
            )
        ),
        *(f"opticsGroup{g} {g} {ps} 16 2 {kv} {cs} {ac}" for g, ps, kv, cs, ac in optics),
        "",
        "# version 30001",
        "",
        "data_particles",
        "",
        "loop_",
    ]
    columns = "ImageName AngleRot AngleTilt AnglePsi DefocusU DefocusV DefocusAngle OpticsGroup"
    columns = columns.split() + (["RandomSubset"] if subsets is not None else [])
    head += [f"_rln{c} #{i + 1}" for i, c in enumerate(columns)]
    rows = []
    for k, (stack, index, group) in enumerate(particles):
        row = f"{index:06d}@{stack} {10.0 * k} {5.0 + 10 * k} {-7.0 * k} {12000 + 500 * k} "
        row += f"{11800 + 500 * k} {15.0 * k} {group}"
        rows.append(row + (f" {subsets[k]}" if subsets is not None else ""))
    return "\n".join([*head, *rows, ""])
