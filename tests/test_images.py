"""MRC maps and the lazy particle-image reader."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryotorch.errors import InputError
from cryotorch.io import ParticleImages, read_map, read_particles, write_map
from tests import files


def test_map_round_trip_keeps_voxel_size(tmp_path: Path):
    vol = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 1.34)
    back, voxel = read_map(tmp_path / "m.mrc")
    np.testing.assert_array_equal(back, vol)
    assert voxel == pytest.approx(1.34, rel=1e-6)


def test_read_any_rows_in_order_across_stacks(tmp_path: Path):
    stacks = files.write_stacks(tmp_path)
    t = read_particles(files.write_star31(tmp_path))  # rows: a[0], a[2], b[1]
    with ParticleImages(t) as images:
        assert images.image_shape == (16, 16)
        out = images.read(np.array([2, 0, 1, 2, 0]))
    expected = np.stack(
        [stacks["b"][1], stacks["a"][0], stacks["a"][2], stacks["b"][1], stacks["a"][0]]
    )
    np.testing.assert_array_equal(out, expected)


def test_reader_keeps_few_files_open(tmp_path: Path):
    stacks = files.write_stacks(tmp_path)
    t = read_particles(files.write_star31(tmp_path))
    with ParticleImages(t, max_open=1) as images:
        for rows in ([0], [2], [1], [2, 1]):
            np.testing.assert_array_equal(
                images.read(np.array(rows))[0],
                [stacks["a"][0], stacks["a"][2], stacks["b"][1]][rows[0]],
            )
            assert len(images._open_maps) == 1


def test_nan_in_an_image_is_reported_at_read_time(tmp_path: Path):
    files.write_stacks(tmp_path)
    with mrcfile.open(tmp_path / "Stacks" / "a.mrcs", mode="r+") as mrc:
        mrc.data[2, 3, 4] = np.nan
    t = read_particles(files.write_star31(tmp_path))
    with ParticleImages(t) as images:
        images.read(np.array([0, 2]))  # rows without the bad image read fine
        with pytest.raises(
            InputError, match=r"a\.mrcs: image 3: contains NaN or Inf \(.*particles\.star row 2\)"
        ):
            images.read(np.array([0, 1]))


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (
            "missing_stack",
            r"particles\.star: rlnImageName: row 3: stack file .*b\.mrcs does not exist",
        ),
        (
            "short_stack",
            r"particles\.star: rlnImageName: row 2: image 3 is past the end of .*a\.mrcs, "
            r"which holds 2",
        ),
        (
            "pixel_size",
            r"b\.mrcs: header\.voxel_size: pixel size 3\.0000 Å disagrees with 2\.0000 Å",
        ),
        ("mode", r"a\.mrcs: header\.mode: .*mode 4 is not supported"),
        ("box", r"b\.mrcs: header\.nx/ny: images are 8x8, the table's optics group says 16"),
    ],
)
def test_stack_problems_are_named(tmp_path: Path, damage: str, pattern: str):
    files.write_stacks(tmp_path, n_a=2 if damage == "short_stack" else 3)
    stack_b = tmp_path / "Stacks" / "b.mrcs"
    if damage == "missing_stack":
        stack_b.unlink()
    elif damage == "pixel_size":
        with mrcfile.open(stack_b, mode="r+") as mrc:
            mrc.voxel_size = 3.0
    elif damage == "mode":
        with mrcfile.new(tmp_path / "Stacks" / "a.mrcs", overwrite=True) as mrc:
            mrc.set_data(np.zeros((3, 16, 16), dtype=np.complex64))
    elif damage == "box":
        with mrcfile.new(stack_b, overwrite=True) as mrc:
            mrc.set_data(np.zeros((2, 8, 8), dtype=np.float32))
    t = read_particles(files.write_star31(tmp_path))
    with pytest.raises(InputError, match=pattern):
        ParticleImages(t)
