"""Every geometric and indexing convention of the file formats, in one place.

cryotorch's in-memory convention is RELION's, with explicit units:

* **Rotation**: RELION's matrix ``A`` (RELION ``Euler_angles2matrix``), shape ``(..., 3, 3)``.
  ``A`` rotates the reference into the particle frame: a point ``p`` of the map (in Å, relative
  to the map centre) appears in the particle image at ``(A @ p)[:2]`` (x, y), and a 2D Fourier
  pixel ``(kx, ky)`` of the image samples the map's 3D transform at ``A.T @ (kx, ky, 0)``.
* **Euler angles**: RELION's ``(rot, tilt, psi)`` in degrees, ZYZ, ``A = Rz(psi) Ry(tilt) Rz(rot)``
  with the *passive* elementary matrices ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and
  ``Ry(a) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``. Equivalently ``A`` is the transpose of the
  active intrinsic ZYZ rotation ``Rz(rot) Ry(tilt) Rz(psi)``.
* **Shift**: RELION's origin ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å: the particle's centre
  sits at ``box_centre - origin / pixel_size`` (pixels), so a positive x origin moves the
  particle to the left. ``box_centre = (D // 2, D // 2)`` in 0-based ``(x, y)`` pixels.
* **Indices**: 0-based everywhere in memory. RELION's ``rlnImageName`` index and
  ``rlnClassNumber`` are 1-based; cryoSPARC's ``blob/idx`` and ``alignments3D/class`` are 0-based.
* **CTF astigmatism angle**: degrees in memory (RELION's ``rlnDefocusAngle``); cryoSPARC stores
  radians (``ctf/df_angle_rad``) measured from the same axis in the same sense.
* **Half-sets**: RELION ``rlnRandomSubset`` is 1 or 2; cryoSPARC ``alignments3D/split`` is 0 or 1.

cryoSPARC's ``alignments3D/pose`` is a rotation vector (axis times angle, radians) whose
matrix (Rodrigues' formula, active rotation) is the *transpose* of RELION's ``A``, i.e.
``pose = -rotvec(A)``. Its ``alignments3D/shift`` is RELION's origin in pixels of
``alignments3D/psize_A`` (same sign). These are the conversions of the two public converters,
pyem's ``csparc2star`` and cryoDRGN's ``parse_pose_csparc``/``parse_pose_star``, which agree.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "class_number_to_zero_based",
    "cryosparc_pose_to_rotation",
    "cryosparc_shift_to_origin_angstrom",
    "euler_to_rotation",
    "matrix_to_rotvec",
    "one_based_to_zero_based",
    "origin_angstrom_to_cryosparc_shift",
    "random_subset_to_split",
    "rotation_to_cryosparc_pose",
    "rotation_to_euler",
    "rotvec_to_matrix",
    "split_to_random_subset",
    "zero_based_to_one_based",
]


# --- rotations -------------------------------------------------------------------------------


def euler_to_rotation(rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    """RELION ZYZ Euler angles (degrees) -> RELION's rotation matrix ``A``, shape ``(..., 3, 3)``.

    ``A = Rz(psi) Ry(tilt) Rz(rot)`` with passive elementary rotations, written out as in
    RELION's ``Euler_angles2matrix``.
    """
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def rotation_to_euler(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's rotation matrix ``A`` ``(..., 3, 3)`` -> ``(rot, tilt, psi)`` in degrees.

    Tilt is returned in ``[0, 180]``, rot and psi in ``(-180, 180]``. At tilt 0 or 180 (gimbal
    lock) only ``rot ± psi`` is defined; rot is then set to 0, as RELION does.
    """
    m = np.asarray(matrix, dtype=np.float64)
    abs_sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    tilt = np.arctan2(abs_sb, m[..., 2, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    # Gimbal lock, rot = 0: tilt 0 gives A[:2, :2] = Rz(psi); tilt 180 gives
    # [[-cos psi, sin psi], [sin psi, cos psi]].
    psi_locked = np.where(
        m[..., 2, 2] > 0,
        np.arctan2(m[..., 0, 1], m[..., 0, 0]),
        np.arctan2(m[..., 0, 1], -m[..., 0, 0]),
    )
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), psi_locked)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, radians) ``(..., 3)`` -> matrix ``(..., 3, 3)`` (Rodrigues).

    The matrix is the *active* rotation by ``|v|`` about ``v / |v|``:
    ``R = I + sin(t) K + (1 - cos(t)) K²`` with ``K`` the cross-product matrix of the unit axis.
    """
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    zero = np.zeros_like(v[..., 0])
    k = np.stack(
        [
            np.stack([zero, -v[..., 2], v[..., 1]], -1),
            np.stack([v[..., 2], zero, -v[..., 0]], -1),
            np.stack([-v[..., 1], v[..., 0], zero], -1),
        ],
        -2,
    )
    # sin(t)/t and (1-cos(t))/t² with their series near t = 0 (K here is not normalised).
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1 - theta**2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(..., 3, 3)`` -> rotation vector ``(..., 3)`` in radians, angle in [0, π].

    Inverse of :func:`rotvec_to_matrix`, stable near 0 and π (via the unit quaternion).
    """
    m = np.asarray(matrix, dtype=np.float64)
    # Quaternion (w, x, y, z) by Shepperd's method: pick the largest diagonal term.
    tr = np.trace(m, axis1=-2, axis2=-1)
    diag = np.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    case = np.argmax(diag, axis=-1)
    q = np.empty((*m.shape[:-2], 4))
    r = np.sqrt(np.maximum(1 + 2 * diag.max(-1) - tr, 0.0))  # 4|q_case|... times 1/2 below
    s = 0.5 / np.where(r == 0, 1.0, r)
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s01, s02, s12 = (
        m[..., 0, 1] + m[..., 1, 0],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 2] + m[..., 2, 1],
    )
    options = [
        np.stack([0.5 * r, d21 * s, d02 * s, d10 * s], -1),
        np.stack([d21 * s, 0.5 * r, s01 * s, s02 * s], -1),
        np.stack([d02 * s, s01 * s, 0.5 * r, s12 * s], -1),
        np.stack([d10 * s, s02 * s, s12 * s, 0.5 * r], -1),
    ]
    for i, opt in enumerate(options):
        q = np.where((case == i)[..., None], opt, q)
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)  # w >= 0 -> angle in [0, π]
    xyz_norm = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2 * np.arctan2(xyz_norm, q[..., 0])
    scale = np.where(xyz_norm < 1e-12, 2.0, angle / np.where(xyz_norm < 1e-12, 1.0, xyz_norm))
    return q[..., 1:] * scale[..., None]


def cryosparc_pose_to_rotation(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` (rotation vector, radians) -> RELION matrix ``A``.

    cryoSPARC's matrix ``expmap(pose)`` is ``A.T``.
    """
    return np.swapaxes(rotvec_to_matrix(pose), -1, -2)


def rotation_to_cryosparc_pose(matrix: np.ndarray) -> np.ndarray:
    """RELION matrix ``A`` -> cryoSPARC ``alignments3D/pose`` (rotation vector, radians)."""
    return matrix_to_rotvec(np.swapaxes(np.asarray(matrix, dtype=np.float64), -1, -2))


# --- shifts ----------------------------------------------------------------------------------


def cryosparc_shift_to_origin_angstrom(shift_px: np.ndarray, pixel_size: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/shift`` ``(..., 2)`` (pixels) -> RELION origin (Å).

    ``pixel_size`` (Å, ``alignments3D/psize_A``) broadcasts against ``shift_px[..., 0]``.
    """
    return np.asarray(shift_px, dtype=np.float64) * np.asarray(pixel_size, np.float64)[..., None]


def origin_angstrom_to_cryosparc_shift(origin: np.ndarray, pixel_size: np.ndarray) -> np.ndarray:
    """RELION origin ``(..., 2)`` (Å) -> cryoSPARC ``alignments3D/shift`` (pixels)."""
    return np.asarray(origin, dtype=np.float64) / np.asarray(pixel_size, np.float64)[..., None]


# --- indices ---------------------------------------------------------------------------------


def one_based_to_zero_based(index: np.ndarray) -> np.ndarray:
    """RELION's 1-based indices (``rlnImageName`` ``i@stack``, ``rlnClassNumber``) -> 0-based."""
    return np.asarray(index, dtype=np.int64) - 1


def zero_based_to_one_based(index: np.ndarray) -> np.ndarray:
    """0-based indices -> RELION's 1-based ones."""
    return np.asarray(index, dtype=np.int64) + 1


class_number_to_zero_based = one_based_to_zero_based


def random_subset_to_split(random_subset: np.ndarray) -> np.ndarray:
    """RELION ``rlnRandomSubset`` (1, 2; 0 = unset) -> cryoSPARC ``alignments3D/split`` (0, 1)."""
    return np.clip(np.asarray(random_subset, dtype=np.int64) - 1, 0, 1)


def split_to_random_subset(split: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/split`` (0, 1) -> RELION ``rlnRandomSubset`` (1, 2)."""
    return np.asarray(split, dtype=np.int64) + 1
