"""cryoSPARC ``.cs`` files: large headers, uids, exposure groups and half-sets (issue 19).

The ``.cs`` inputs are written by cryoSPARC's own ``Dataset`` (cryosparc-tools) or by hand with
numpy, never by cryotorch's writer; cryotorch's output is read back with cryosparc-tools.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryotorch.cli.convert import main as convert_main
from cryotorch.errors import InputError, InputWarning
from cryotorch.io import read_particles, write_particles
from tests import files

dataset = pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools is a dev dependency")

# Per-class fields of a cryoSPARC heterogeneous refinement / 3D classification output.
CLASS_FIELDS = [
    ("split", "u4", ()),
    ("shift", "f4", (2,)),
    ("pose", "f4", (3,)),
    ("psize_A", "f4", ()),
    ("error", "f4", ()),
    ("error_min", "f4", ()),
    ("resid_pow", "f4", ()),
    ("slice_pow", "f4", ()),
    ("image_pow", "f4", ()),
    ("cross_cor", "f4", ()),
    ("alpha", "f4", ()),
    ("alpha_min", "f4", ()),
    ("weight", "f4", ()),
    ("pose_ess", "f4", ()),
    ("shift_ess", "f4", ()),
    ("class_posterior", "f4", ()),
    ("class", "u4", ()),
    ("class_ess", "f4", ()),
]


def cs_dataset(raw: np.ndarray, extra: list[tuple] = ()) -> dataset.Dataset:
    """A cryosparc-tools ``Dataset`` holding the rows of structured array ``raw`` (its own new
    uids) plus zero-filled fields ``extra`` (``(name, dtype, shape)``)."""
    spec = []
    for name in raw.dtype.names:
        if name == "uid":
            continue
        base, shape = raw.dtype.fields[name][0].base.str, raw[name].shape[1:]
        base = "O" if name == "blob/path" else base  # cryosparc-tools keeps strings as objects
        spec.append((name, base, shape) if shape else (name, base))
    spec += [(n, t, s) if s else (n, t) for n, t, s in extra]
    d = dataset.Dataset.allocate(len(raw), spec)
    for name in raw.dtype.names:
        if name != "uid":
            d[name] = raw[name] if name != "blob/path" else [p.decode() for p in raw[name]]
    return d


def save_npy(data: np.ndarray, path: Path, allow_pickle: bool = False) -> Path:
    with open(path, "wb") as f:
        np.save(f, data, allow_pickle=allow_pickle)
    return path


def no_warnings(read, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        return read(*args, **kwargs)


# --- 1. headers over numpy's default limit ---------------------------------------------------


def test_cs_with_many_class_fields_loads(tmp_path: Path):
    extra = [
        (f"alignments_class_{k}/{name}", t, s) for k in range(20) for name, t, s in CLASS_FIELDS
    ]
    path = tmp_path / "J9_particles.cs"
    cs_dataset(files.cs_for_star31(), extra).save(path)
    with pytest.raises(ValueError, match="max_header_size"):  # over numpy's 10000 characters
        np.load(path, allow_pickle=False)
    t = read_particles(path)
    star = read_particles(files.write_star31(tmp_path))
    np.testing.assert_array_equal(t.image_path, star.image_path)
    np.testing.assert_array_equal(t.image_index, star.image_index)
    np.testing.assert_allclose(t.rotation, star.rotation, atol=1e-6)
    np.testing.assert_allclose(t.pixel_size_angstrom, star.pixel_size_angstrom, rtol=1e-6)
    assert "alignments_class_19/class_posterior" in t.source.particles.dtype.names


@pytest.mark.parametrize("classes", [0, 20])
def test_cs_with_an_object_field_is_still_refused(tmp_path: Path, classes: int):
    raw = files.cs_for_star31()
    extra = [
        (f"alignments_class_{k}/{n}", t, s) for k in range(classes) for n, t, s in CLASS_FIELDS
    ]
    descr = [(n, raw.dtype.fields[n][0]) for n in raw.dtype.names if n != "blob/path"]
    data = np.zeros(len(raw), dtype=[*descr, ("blob/path", "O"), *extra])
    for name in raw.dtype.names:
        data[name] = raw[name] if name != "blob/path" else [p.decode() for p in raw[name]]
    path = save_npy(data, tmp_path / "p.cs", allow_pickle=True)
    with pytest.raises(InputError, match=r"object \(pickled\) field"):
        read_particles(path)


# --- 2. uids ----------------------------------------------------------------------------------

STAR_OTHER = files.star31_text(  # other particles of the same stacks as files.STAR31
    [(1, 1.6, 300.0, 2.7, 0.1), (2, 2.0, 200.0, 1.4, 0.07)],
    [("Stacks/a.mrcs", 2, 1), ("Stacks/b.mrcs", 1, 2), ("Stacks/a.mrcs", 4, 1)],
)


def convert(source: Path, target: Path) -> dataset.Dataset:
    assert convert_main([str(source), str(target), "--no-check-stacks"]) == 0
    return dataset.Dataset.load(target)


def test_converted_files_of_different_particles_join_in_cryosparc(tmp_path: Path):
    a = convert(files.write_star31(tmp_path), tmp_path / "a.cs")
    b = convert(files.write_star31(tmp_path, STAR_OTHER, "other.star"), tmp_path / "b.cs")
    assert len(dataset.Dataset.union(a, b)) == 6
    uids = dataset.Dataset.append(a, b)["uid"]
    assert len(np.unique(uids)) == 6 and (uids != 0).all()


@pytest.mark.filterwarnings("ignore:.*rlnRandomSubset")  # the one-particle file has one half
def test_the_same_particle_gets_the_same_uid_in_every_conversion(tmp_path: Path):
    star = files.write_star31(tmp_path)
    first = convert(star, tmp_path / "first.cs")
    again = convert(star, tmp_path / "elsewhere" / "again.cs")
    np.testing.assert_array_equal(first["uid"], again["uid"])
    # Another file holding one of the same particles (Stacks/b.mrcs image 2): the same uid.
    lines = files.STAR31.strip().splitlines()
    one = convert(
        files.write_star31(tmp_path, "\n".join(lines[:-3] + lines[-1:])), tmp_path / "1.cs"
    )
    assert one["uid"].tolist() == [first["uid"][2]]


def test_uids_of_a_symmetry_expanded_table_are_unique(tmp_path: Path):
    rows = [("Stacks/a.mrcs", 1, 1)] * 4 + [("Stacks/a.mrcs", 2, 1)] * 4
    star = files.write_star31(tmp_path, files.star31_text([(1, 1.6, 300, 2.7, 0.1)], rows))
    d = convert(star, tmp_path / "expanded.cs")
    assert len(np.unique(d["uid"])) == 8 and (d["uid"] != 0).all()
    np.testing.assert_array_equal(convert(star, tmp_path / "again.cs")["uid"], d["uid"])


# --- 3. optics groups and exposure groups ----------------------------------------------------

A, B = (1.6, 300.0, 2.7, 0.1), (2.0, 200.0, 1.4, 0.07)
SIX_GROUPS = [(1, *A), (2, *A), (3, *A), (5, *B), (8, *B), (9, *A)]
SIX_GROUP_PARTICLES = [
    ("Stacks/a.mrcs", 1, 1),
    ("Stacks/a.mrcs", 2, 9),
    ("Stacks/b.mrcs", 1, 5),
    ("Stacks/a.mrcs", 3, 2),
    ("Stacks/b.mrcs", 2, 8),
    ("Stacks/a.mrcs", 4, 3),
    ("Stacks/a.mrcs", 5, 9),
    ("Stacks/b.mrcs", 3, 5),
]


TWO_PARTICLES = [("Stacks/a.mrcs", 1, 1), ("Stacks/b.mrcs", 2, 1)]


def per_particle_numbers(t) -> np.ndarray:
    return t.optics.number[t.optics_group]


def test_star_optics_groups_survive_a_trip_through_cs(tmp_path: Path):
    star = files.write_star31(tmp_path, files.star31_text(SIX_GROUPS, SIX_GROUP_PARTICLES))
    t_star = read_particles(star)
    numbers = [p[2] for p in SIX_GROUP_PARTICLES]
    write_particles(t_star, tmp_path / "p.cs")
    assert dataset.Dataset.load(tmp_path / "p.cs")["ctf/exp_group_id"].tolist() == numbers
    t_cs = read_particles(tmp_path / "p.cs")
    assert len(t_cs.optics) == len(t_star.optics) == 6
    np.testing.assert_array_equal(t_cs.optics_group, t_star.optics_group)
    for t in (t_star, t_cs):
        assert t.optics.number.tolist() == [1, 2, 3, 5, 8, 9]
        assert per_particle_numbers(t).tolist() == numbers
    np.testing.assert_allclose(t_cs.pixel_size_angstrom, t_star.pixel_size_angstrom, rtol=1e-6)
    np.testing.assert_allclose(t_cs.voltage_kv, t_star.voltage_kv, rtol=1e-6)

    assert (
        convert_main([str(tmp_path / "p.cs"), str(tmp_path / "back.star"), "--no-check-stacks"])
        == 0
    )
    blocks = starfile.read(tmp_path / "back.star", always_dict=True)
    assert blocks["optics"]["rlnOpticsGroup"].tolist() == [1, 2, 3, 5, 8, 9]
    assert blocks["particles"]["rlnOpticsGroup"].tolist() == numbers
    assert per_particle_numbers(read_particles(tmp_path / "back.star")).tolist() == numbers


def test_star_optics_group_listed_twice_is_refused(tmp_path: Path):
    star = files.write_star31(tmp_path, files.star31_text([(1, *A), (1, *B)], TWO_PARTICLES))
    with pytest.raises(InputError, match="rlnOpticsGroup: optics group 1 appears 2 times"):
        read_particles(star)


def six_exposure_groups(exp_group_id: list[int]) -> dataset.Dataset:
    """Six particles in three optics settings, exposure groups ``exp_group_id``."""
    n = 6
    d = dataset.Dataset.allocate(
        n,
        [
            ("blob/path", "O"),
            ("blob/idx", "u4"),
            ("blob/shape", "u4", (2,)),
            ("blob/psize_A", "f4"),
            ("ctf/accel_kv", "f4"),
            ("ctf/cs_mm", "f4"),
            ("ctf/amp_contrast", "f4"),
            ("ctf/df1_A", "f4"),
            ("ctf/df2_A", "f4"),
            ("ctf/df_angle_rad", "f4"),
            ("ctf/exp_group_id", "u4"),
            ("alignments3D/pose", "f4", (3,)),
            ("alignments3D/split", "u4"),
        ],
    )
    d["blob/path"] = ["Stacks/a.mrcs"] * n
    d["blob/idx"] = np.arange(n)
    d["blob/shape"] = 16
    d["blob/psize_A"] = [1.0, 1.0, 1.0, 1.0, 1.5, 1.5]
    d["ctf/accel_kv"] = [300, 300, 200, 200, 300, 300]
    d["ctf/cs_mm"] = 2.7
    d["ctf/amp_contrast"] = 0.1
    d["ctf/df1_A"] = d["ctf/df2_A"] = 15000
    d["ctf/exp_group_id"] = exp_group_id
    d["alignments3D/split"] = [0, 1, 0, 1, 0, 1]
    return d


def test_cs_exposure_groups_are_optics_groups(tmp_path: Path):
    six_exposure_groups([4, 1, 2, 3, 6, 5]).save(tmp_path / "p.cs")
    t = no_warnings(read_particles, tmp_path / "p.cs")
    assert len(t.optics) == 6
    assert t.optics_group.tolist() == [3, 0, 1, 2, 5, 4]
    assert t.optics.number.tolist() == [1, 2, 3, 4, 5, 6]
    assert per_particle_numbers(t).tolist() == [4, 1, 2, 3, 6, 5]
    np.testing.assert_allclose(t.pixel_size_angstrom, [1.0, 1.0, 1.0, 1.0, 1.5, 1.5])
    np.testing.assert_allclose(t.voltage_kv, [300, 300, 200, 200, 300, 300])


def test_cs_exposure_group_0_is_written_to_star_as_1(tmp_path: Path):
    six_exposure_groups([0, 0, 1, 1, 2, 2]).save(tmp_path / "p.cs")
    t = read_particles(tmp_path / "p.cs")
    with pytest.warns(InputWarning, match=r"rlnOpticsGroup: .*number \+ 1"):
        write_particles(t, tmp_path / "p.star")
    assert t.optics.number.tolist() == [0, 1, 2]
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    assert blocks["optics"]["rlnOpticsGroup"].tolist() == [1, 2, 3]
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == [f"opticsGroup{k}" for k in range(3)]
    assert blocks["particles"]["rlnOpticsGroup"].tolist() == [1, 1, 2, 2, 3, 3]
    back = read_particles(tmp_path / "p.star")
    np.testing.assert_allclose(back.voltage_kv, t.voltage_kv)
    np.testing.assert_allclose(back.pixel_size_angstrom, t.pixel_size_angstrom)


def test_cs_exposure_group_with_mixed_optics_is_split_with_a_warning(tmp_path: Path):
    six_exposure_groups([1, 1, 1, 1, 2, 2]).save(tmp_path / "p.cs")  # 1 holds 300 and 200 kV
    with pytest.warns(InputWarning, match=r"ctf/exp_group_id: .*split.*1 -> \[1, 3\]"):
        t = read_particles(tmp_path / "p.cs")
    assert len(t.optics) == 3
    assert per_particle_numbers(t).tolist() == [3, 3, 1, 1, 2, 2]  # 200 kV sorts first
    np.testing.assert_allclose(t.voltage_kv, [300, 300, 200, 200, 300, 300])


# --- 4. half-sets -----------------------------------------------------------------------------


@pytest.mark.parametrize("subset", [1, 2])
def test_star_with_one_half_set_gets_none(tmp_path: Path, subset: int):
    text = files.star31_text([(1, *A)], TWO_PARTICLES, subsets=[subset, subset])
    with pytest.warns(InputWarning, match="rlnRandomSubset: gives every particle the same half"):
        t = read_particles(files.write_star31(tmp_path, text))
    assert t.random_subset.tolist() == [0, 0]


def test_star_with_two_half_sets_keeps_them(tmp_path: Path):
    text = files.star31_text([(1, *A)], TWO_PARTICLES, subsets=[2, 1])
    assert no_warnings(
        read_particles, files.write_star31(tmp_path, text)
    ).random_subset.tolist() == [
        2,
        1,
    ]


@pytest.mark.parametrize("split", [0, 1])
def test_cs_with_one_half_set_gets_none(tmp_path: Path, split: int):
    data = files.cs_for_star31()
    data["alignments3D/split"] = split
    with pytest.warns(InputWarning, match="alignments3D/split: gives every particle the same half"):
        t = read_particles(save_npy(data, tmp_path / "p.cs"))
    assert t.random_subset.tolist() == [0, 0, 0]


def test_cs_with_two_half_sets_keeps_them(tmp_path: Path):
    t = no_warnings(read_particles, save_npy(files.cs_for_star31(), tmp_path / "p.cs"))
    assert t.random_subset.tolist() == [1, 2, 1]


def test_table_without_half_sets_writes_no_split(tmp_path: Path):
    text = files.star31_text([(1, *A)], TWO_PARTICLES)
    t = read_particles(files.write_star31(tmp_path, text))
    write_particles(t, tmp_path / "p.cs")
    assert "alignments3D/split" not in dataset.Dataset.load(tmp_path / "p.cs").fields()
    assert no_warnings(read_particles, tmp_path / "p.cs").random_subset.tolist() == [0, 0]
