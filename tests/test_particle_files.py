"""STAR (3.0, 3.1) and .cs reading and writing, against hand-written files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile

from cryotorch import conventions as cv
from cryotorch.io import read_particles, write_particles
from tests import files


def assert_same_particles(a, b, atol=1e-4):
    np.testing.assert_array_equal(a.image_path, b.image_path)
    np.testing.assert_array_equal(a.image_index, b.image_index)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=atol)
    np.testing.assert_allclose(a.origin_angstrom, b.origin_angstrom, atol=atol)
    np.testing.assert_allclose(a.defocus_u_angstrom, b.defocus_u_angstrom, rtol=1e-6)
    np.testing.assert_allclose(a.defocus_v_angstrom, b.defocus_v_angstrom, rtol=1e-6)
    np.testing.assert_allclose(a.astigmatism_angle_deg, b.astigmatism_angle_deg, atol=atol)
    np.testing.assert_allclose(a.phase_shift_deg, b.phase_shift_deg, atol=atol)
    np.testing.assert_allclose(a.pixel_size_angstrom, b.pixel_size_angstrom, rtol=1e-6)
    np.testing.assert_allclose(a.voltage_kv, b.voltage_kv, rtol=1e-6)
    np.testing.assert_allclose(a.spherical_aberration_mm, b.spherical_aberration_mm, rtol=1e-6)
    np.testing.assert_allclose(a.amplitude_contrast, b.amplitude_contrast, rtol=1e-6)
    np.testing.assert_array_equal(a.random_subset, b.random_subset)


def test_star31_values_and_optics_merge(tmp_path: Path):
    t = read_particles(files.write_star31(tmp_path))
    assert len(t) == 3 and len(t.optics) == 2
    assert t.image_index.tolist() == [0, 2, 1]
    assert t.image_path[0] == str(tmp_path / "Stacks" / "a.mrcs")
    np.testing.assert_allclose(t.pixel_size_angstrom, [1.6, 1.6, 2.0])
    np.testing.assert_allclose(t.voltage_kv, [300, 300, 200])
    np.testing.assert_allclose(t.origin_angstrom, files.ORIGINS_A)
    np.testing.assert_allclose(t.rotation, cv.euler_to_rotation(*files.ANGLES.T))
    np.testing.assert_allclose(t.phase_shift_deg, [0, 90, 0])
    assert t.random_subset.tolist() == [1, 2, 1]
    assert t.optics_group.tolist() == [0, 0, 1]


def test_star30_loads_to_the_same_table(tmp_path: Path):
    t31 = read_particles(files.write_star31(tmp_path))
    t30 = read_particles(files.write_star31(tmp_path, files.STAR30, "old.star"))
    assert_same_particles(t31, t30, atol=1e-9)


def test_star30_pixel_size_given_by_caller(tmp_path: Path):
    text = files.STAR30.replace("_rlnDetectorPixelSize #14", "_rlnDetectorPixelSizeX #14")
    path = files.write_star31(tmp_path, text, "old.star")
    with pytest.raises(ValueError, match="rlnDetectorPixelSize"):
        read_particles(path)
    t = read_particles(path, pixel_size=1.25)
    np.testing.assert_allclose(t.pixel_size_angstrom, 1.25)
    np.testing.assert_allclose(t.origin_angstrom[0], [1.25, -2.5])


def test_star_and_cs_of_the_same_particles_load_identically(tmp_path: Path):
    t_star = read_particles(files.write_star31(tmp_path))
    with open(tmp_path / "particles.cs", "wb") as f:
        np.save(f, files.cs_for_star31())
    t_cs = read_particles(tmp_path / "particles.cs")
    assert_same_particles(t_star, t_cs)


def test_data_dir_override(tmp_path: Path):
    star = files.write_star31(tmp_path / "job")
    t = read_particles(star, data_dir=tmp_path / "project")
    assert t.image_path[2] == str(tmp_path / "project" / "Stacks" / "b.mrcs")


def test_star_write_keeps_columns_optics_and_order_and_adds(tmp_path: Path):
    star = files.write_star31(tmp_path)
    t = read_particles(star)
    out = tmp_path / "out.star"
    write_particles(t, out, {"rlnClassNumber": np.array([2, 1, 2])})
    blocks = starfile.read(out, always_dict=True)
    original = starfile.read(star, always_dict=True)
    assert list(blocks["particles"].columns) == [*original["particles"].columns, "rlnClassNumber"]
    assert (
        blocks["particles"]["rlnImageName"].tolist()
        == original["particles"]["rlnImageName"].tolist()
    )
    assert blocks["particles"]["rlnMicrographName"].tolist() == ["mic1.mrc", "mic1.mrc", "mic2.mrc"]
    assert blocks["optics"].equals(original["optics"])  # rlnMicrographOriginalPixelSize kept
    assert blocks["particles"]["rlnClassNumber"].tolist() == [2, 1, 2]


def test_star_written_elsewhere_still_points_at_the_stacks(tmp_path: Path):
    t = read_particles(files.write_star31(tmp_path / "in"))
    for absolute in (True, False):
        out = tmp_path / "elsewhere" / f"out_{absolute}.star"
        write_particles(t, out, absolute_paths=absolute)
        np.testing.assert_array_equal(read_particles(out).image_path, t.image_path)


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_star_version_round_trip(tmp_path: Path, version: str):
    t = read_particles(files.write_star31(tmp_path))
    out = tmp_path / f"v{version}.star"
    write_particles(t, out, star_version=version)
    back = read_particles(out)
    assert back.source.format == f"star{version}"
    assert_same_particles(t, back, atol=1e-5)
    assert "rlnMicrographName" in back.source.particles.columns


def test_cs_write_adds_class_fields_and_keeps_input_fields(tmp_path: Path):
    with open(tmp_path / "in.cs", "wb") as f:
        np.save(f, files.cs_for_star31())
    t = read_particles(tmp_path / "in.cs")
    new = {
        "alignments3D/class": np.array([0, 1, 1], dtype=np.uint32),
        "alignments3D/class_ess": np.array([1.0, 1.5, 2.0], dtype=np.float32),
        "alignments_class3D_0/class_posterior": np.array([1.0, 0.2, 0.5], dtype=np.float32),
        "alignments_class3D_1/class_posterior": np.array([0.0, 0.8, 0.5], dtype=np.float32),
    }
    write_particles(t, tmp_path / "out.cs", new)
    out = np.load(tmp_path / "out.cs", allow_pickle=False)
    original = files.cs_for_star31()
    for name in original.dtype.names:
        np.testing.assert_array_equal(out[name], original[name])
    for name, values in new.items():
        np.testing.assert_array_equal(out[name], values)


def test_cs_passthrough_merge_by_uid(tmp_path: Path):
    full = files.cs_for_star31()
    ctf_fields = [n for n in full.dtype.names if n.startswith("ctf/")]
    main = full[[n for n in full.dtype.names if n not in ctf_fields]]
    passthrough = full[["uid", *ctf_fields]][::-1]  # another row order
    np.save(tmp_path / "J2_particles.npy", np.ascontiguousarray(main))
    (tmp_path / "J2_particles.npy").rename(tmp_path / "J2_particles.cs")
    with open(tmp_path / "J2_passthrough_particles.cs", "wb") as f:
        np.save(f, np.ascontiguousarray(passthrough))
    with pytest.raises(ValueError, match=r"ctf/accel_kv.*passthrough"):
        read_particles(tmp_path / "J2_particles.cs")
    merged = read_particles(
        tmp_path / "J2_particles.cs", passthrough=tmp_path / "J2_passthrough_particles.cs"
    )
    with open(tmp_path / "full.cs", "wb") as f:
        np.save(f, full)
    assert_same_particles(merged, read_particles(tmp_path / "full.cs"))


def test_cs_paths_with_prefix_and_project_layout(tmp_path: Path):
    # cryoSPARC: paths relative to the project folder, the .cs one level below; '>' is dropped.
    files.write_stacks(tmp_path / "P1")
    data = files.cs_for_star31()
    data["blob/path"] = [b">Stacks/a.mrcs", b"Stacks/a.mrcs", b">Stacks/b.mrcs"]
    (tmp_path / "P1" / "J5").mkdir()
    with open(tmp_path / "P1" / "J5" / "J5_particles.cs", "wb") as f:
        np.save(f, data)
    t = read_particles(tmp_path / "P1" / "J5" / "J5_particles.cs")
    assert t.image_path.tolist() == [
        str(tmp_path / "P1" / "Stacks" / n) for n in ("a.mrcs", "a.mrcs", "b.mrcs")
    ]


def test_cs_shift_uses_alignment_pixel_size(tmp_path: Path):
    data = files.cs_for_star31()
    data["alignments3D/psize_A"] = 2 * data["blob/psize_A"]  # aligned at half the resolution
    data["alignments3D/shift"] /= 2
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, data)
    np.testing.assert_allclose(
        read_particles(tmp_path / "p.cs").origin_angstrom, files.ORIGINS_A, atol=1e-5
    )


def test_take_subsets_rows_and_source(tmp_path: Path):
    t = read_particles(files.write_star31(tmp_path)).take(np.array([2, 0]))
    assert t.image_index.tolist() == [1, 0]
    assert t.source.particles["rlnMicrographName"].tolist() == ["mic2.mrc", "mic1.mrc"]
    write_particles(t, tmp_path / "sub.star")
    assert read_particles(tmp_path / "sub.star").image_index.tolist() == [1, 0]
