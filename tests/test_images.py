"""MRC maps and the lazy particle-image reader."""

from __future__ import annotations

import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryotorch.engine.settings import MaskSettings
from cryotorch.errors import InputError, InputWarning
from cryotorch.inputs import read_masks, read_matching_map
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


# --- Found by tests/test_generated_bad_input.py (issue 21) ----------------------------------


def _poke(path: Path, offset: int, value: int) -> None:
    """Set the int32 header word at byte ``offset`` of MRC file ``path``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<i", value))


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (  # was read: only a run read the data, and refused it half-way
            "cut",
            r"a\.mrcs: header: says 16 x 16 x 3 values of mode 2 after a 0-byte extended header, "
            r"4096 bytes, but the file has 2000: is it cut short\?",
        ),
        (  # the pixels were read as int16
            "mode 1",
            r"a\.mrcs: header: says 16 x 16 x 3 values of mode 1 .*expected a header that fits",
        ),
        ("nx 8", r"a\.mrcs: header: says 8 x 16 x 3 values"),  # was "images are 8x16"
        ("axes", r"b\.mrcs: header\.mapc/mapr/maps: axis order 2, 1, 3; cryotorch reads"),
        (  # named no particle
            "text",
            r"b\.mrcs: not a readable MRC file .*\(the stack of .*particles\.star row 3, "
            r"rlnImageName\)",
        ),
    ],
)
def test_stack_headers_that_do_not_describe_the_file_are_refused(tmp_path, damage, pattern):
    files.write_stacks(tmp_path)
    a, b = tmp_path / "Stacks" / "a.mrcs", tmp_path / "Stacks" / "b.mrcs"
    if damage == "cut":
        a.write_bytes(a.read_bytes()[:2000])
    elif damage == "mode 1":
        _poke(a, 12, 1)
    elif damage == "nx 8":
        _poke(a, 0, 8)
    elif damage == "axes":
        _poke(b, 64, 2)
        _poke(b, 68, 1)
    else:
        b.write_text("not an MRC file\n" * 100)
    with pytest.raises(InputError, match=pattern):
        ParticleImages(read_particles(files.write_star31(tmp_path)))


def test_a_box_that_disagrees_names_the_particle_files_box_too(tmp_path: Path):
    files.write_stacks(tmp_path)
    text = files.STAR31.replace("2.0 16 2\n", "2.0 17 2\n")
    pattern = r"b\.mrcs: header\.nx/ny: images are 16x16, the table's optics group says 17 "
    pattern += r"\(rlnImageSize of optics group 2 in .*particles\.star, row 3\)"
    with pytest.raises(InputError, match=pattern):
        ParticleImages(read_particles(files.write_star31(tmp_path, text)))


def test_a_stack_marked_as_a_stack_of_volumes_is_read_image_by_image(tmp_path: Path):
    """ispg 401: mrcfile gives (1, 2, 16, 16); every section is an image (was an IndexError)."""
    stacks = files.write_stacks(tmp_path)
    _poke(tmp_path / "Stacks" / "b.mrcs", 88, 401)
    with ParticleImages(read_particles(files.write_star31(tmp_path))) as images:
        np.testing.assert_array_equal(images.read(np.array([2])), stacks["b"][1:2])


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        # a traceback, or NaN posteriors, in a run that used it
        ("huge", r"m\.mrc: data: holds a value of 1e\+30; expected at most 1e\+10 in magnitude"),
        # was "not a readable MRC file (Expected 2048 bytes in data block but limit is 2044)"
        ("nsymbt", r"m\.mrc: header: says 8 x 8 x 8 values of mode 2 after a 4-byte extended"),
        ("axes", r"m\.mrc: header\.mapc/mapr/maps: axis order 3, 2, 1"),  # was read transposed
        # were "not a readable MRC file (negative count)", and "... -256 bytes ..."
        ("nsymbt -1", r"m\.mrc: header\.nsymbt: -1: expected the extended header's length"),
        ("ny -5", r"m\.mrc: header\.nx/ny/nz: 8 x -5 x 8: expected sizes of at least 1"),
    ],
)
def test_maps_that_cannot_be_read_as_they_are_are_refused(tmp_path, damage, pattern):
    volume = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    if damage == "huge":
        volume[1, 2, 3] = 1e30
    path = tmp_path / "m.mrc"
    write_map(path, volume, 1.6)
    if damage == "nsymbt":
        _poke(path, 92, 4)
    elif damage == "nsymbt -1":
        _poke(path, 92, -1)
    elif damage == "ny -5":
        _poke(path, 4, -5)
    elif damage == "axes":
        _poke(path, 64, 3)
        _poke(path, 72, 1)
    with pytest.raises(InputError, match=pattern):
        read_map(path)


# --- The maps a run is given (cryotorch/inputs.py), found by the generated suite ------------


@pytest.mark.parametrize(
    ("volume", "threshold"),
    [("zeros", 0.2), ("negative", 0.2), ("noise", 2.0)],
)
def test_a_reference_that_makes_an_empty_solvent_mask_is_refused(tmp_path, volume, threshold):
    """mask.solvent=from_reference with a map of zeros, of no positive density, or a threshold
    past its maximum made a mask of zeros, and every class map all zeros."""
    files.write_stacks(tmp_path)
    volume = {
        "zeros": np.zeros((16, 16, 16), np.float32),
        "negative": -np.ones((16, 16, 16), np.float32),
        "noise": np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32),
    }[volume]
    write_map(tmp_path / "ref.mrc", volume, 1.6)
    mask = MaskSettings(solvent="from_reference", threshold=threshold)
    with ParticleImages(read_particles(files.write_star31(tmp_path))) as images:
        with pytest.raises(InputError, match=r"ref\.mrc: data: the solvent mask made from this"):
            read_masks(mask, str(tmp_path / "ref.mrc"), images, 16, 1.6)


def test_a_map_whose_voxel_size_is_0_is_taken_as_not_set_with_a_warning(tmp_path: Path):
    """As stacks are (it was taken silently)."""
    files.write_stacks(tmp_path)
    write_map(tmp_path / "m.mrc", np.ones((16, 16, 16), np.float32), 0.0)
    with ParticleImages(read_particles(files.write_star31(tmp_path))) as images:
        with pytest.warns(InputWarning, match=r"m\.mrc: header\.voxel_size: 0\.0 Å, 'not set'"):
            read_matching_map(str(tmp_path / "m.mrc"), images)
