"""Conventions against outside references: scipy's rotations and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryotorch import conventions as cv

RNG = np.random.default_rng(1)
EULERS = np.stack(
    [
        RNG.uniform(-180, 180, 500),
        np.degrees(np.arccos(RNG.uniform(-1, 1, 500))),
        RNG.uniform(-180, 180, 500),
    ],
    axis=1,
)


def test_euler_matrix_is_transpose_of_scipy_intrinsic_zyz():
    # RELION's A = Rz(psi) Ry(tilt) Rz(rot) (passive) = (active intrinsic ZYZ (rot, tilt, psi))^T.
    expected = Rotation.from_euler("ZYZ", EULERS, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(cv.euler_to_rotation(*EULERS.T), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("angles", "matrix"),
    [
        # A point on the map's +x axis appears on the image's -y axis after rot = 90.
        ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
        ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        ((0, 180, 0), [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]),
    ],
)
def test_euler_hand_worked(angles, matrix):
    np.testing.assert_allclose(cv.euler_to_rotation(*angles), matrix, atol=1e-12)


def test_euler_round_trip_gives_same_matrix_including_gimbal_lock():
    eulers = np.concatenate([EULERS, [[30, 0, 40], [30, 180, 40], [-170, 0, 170], [0, 1e-9, 0]]])
    a = cv.euler_to_rotation(*eulers.T)
    rot, tilt, psi = cv.rotation_to_euler(a)
    assert (tilt >= 0).all() and (tilt <= 180).all()
    np.testing.assert_allclose(cv.euler_to_rotation(rot, tilt, psi), a, atol=1e-10)
    # Away from gimbal lock with tilt in (0, 180) the angles themselves come back.
    np.testing.assert_allclose(np.stack([rot, tilt, psi], 1)[:500], EULERS, atol=1e-8)


def test_rotvec_against_scipy_including_near_pi_and_zero():
    axes = RNG.normal(size=(300, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate(
        [RNG.uniform(0, np.pi, 294), [0, 1e-9, 1e-4, np.pi - 1e-7, np.pi, np.pi - 1e-3]]
    )
    rotvec = axes * angles[:, None]
    np.testing.assert_allclose(
        cv.rotvec_to_matrix(rotvec), Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12
    )
    back = cv.matrix_to_rotvec(Rotation.from_rotvec(rotvec).as_matrix())
    np.testing.assert_allclose(
        cv.rotvec_to_matrix(back), Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-9
    )
    np.testing.assert_allclose(back[:294], rotvec[:294], atol=1e-9)


def test_cryosparc_pose_matches_published_relation():
    # pyem/cryoDRGN: scipy from_rotvec(pose).as_euler("ZYZ") gives RELION's (rot, tilt, psi).
    pose = Rotation.from_euler("ZYZ", EULERS, degrees=True).as_rotvec()
    np.testing.assert_allclose(
        cv.cryosparc_pose_to_rotation(pose), cv.euler_to_rotation(*EULERS.T), atol=1e-12
    )
    np.testing.assert_allclose(
        cv.rotation_to_cryosparc_pose(cv.euler_to_rotation(*EULERS.T)), pose, atol=1e-9
    )


def test_shift_and_index_conventions():
    # cryoSPARC shift (pixels of alignments3D/psize_A) has RELION's origin sign.
    np.testing.assert_allclose(
        cv.cryosparc_shift_to_origin_angstrom([[2.0, -1.0]], [1.5]), [[3.0, -1.5]]
    )
    np.testing.assert_allclose(
        cv.origin_angstrom_to_cryosparc_shift([[3.0, -1.5]], [1.5]), [[2.0, -1.0]]
    )
    assert cv.one_based_to_zero_based([1, 7]).tolist() == [0, 6]
    assert cv.zero_based_to_one_based([0, 6]).tolist() == [1, 7]
    assert cv.random_subset_to_split([1, 2]).tolist() == [0, 1]
    assert cv.split_to_random_subset([0, 1]).tolist() == [1, 2]
