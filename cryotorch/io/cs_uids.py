"""cryoSPARC particle uids made from each particle's identity (stack path and index), so that
they differ between particles and repeat between conversions.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

__all__ = ["particle_uids"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: x -> x + k * _GOLDEN is 1:1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array: a bijection that spreads every bit."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)  # uint64 arrays wrap modulo 2^64
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def particle_uids(image_path: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """``(n,)`` uint64 cryoSPARC uids, derived from each particle's identity.

    cryoSPARC draws uids at random; joining two files (``Dataset.union``, passthroughs) relies
    on different particles having different uids. A uid here is a 64-bit hash of the particle:
    blake2b (8 bytes) of the resolved absolute stack path, plus the 0-based ``image_index``
    times an odd constant, through splitmix64. So different particles get different uids in
    any conversion (within one stack always, across stacks but for a ~2^-64 chance), and the
    same particle gets the same uid every time (output is reproducible). A row that repeats an
    earlier row's image (symmetry expansion) is re-mixed with its repeat count. The uids are
    checked nonzero and unique; a clash (vanishingly rare) is re-mixed, deterministically.
    """
    image_index = np.asarray(image_index, dtype=np.int64)
    n = len(image_index)
    paths, code = np.unique(np.asarray(image_path, dtype=str), return_inverse=True)
    code = code.reshape(-1)
    path_hash = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(os.path.realpath(p).encode("utf-8"), digest_size=8).digest(),
                "little",
            )
            for p in paths
        ],
        dtype=np.uint64,
    )
    uid = _splitmix64(path_hash[code] + _GOLDEN * image_index.astype(np.uint64))
    # How many earlier rows show the same image: 0 for the first (usually only) one.
    order = np.lexsort((np.arange(n), image_index, code))  # by image, then by row
    c, i = code[order], image_index[order]
    same = np.r_[False, (c[1:] == c[:-1]) & (i[1:] == i[:-1])]
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    repeat = np.empty(n, dtype=np.uint64)
    repeat[order] = (np.arange(n) - run_start).astype(np.uint64)
    again = repeat > 0
    uid[again] = _splitmix64(uid[again] ^ _splitmix64(repeat[again] * _GOLDEN))
    for _ in range(64):
        clash = np.ones(n, dtype=bool)
        clash[np.unique(uid, return_index=True)[1]] = False  # the first row of each uid is kept
        clash |= uid == 0
        if not clash.any():
            return uid
        uid[clash] = _splitmix64(uid[clash] + _GOLDEN)
    raise RuntimeError("could not make unique particle uids")  # unreachable in practice
