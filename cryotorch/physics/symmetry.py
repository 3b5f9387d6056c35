"""Point groups of RELION's ``--sym``: their rotation matrices, in cryotorch's convention.

A map ``V`` (indexed ``[z, y, x]``, positions ``p = (x, y, z)`` in pixels from the centre, as
in :mod:`cryotorch.conventions`) has the symmetry of a group when ``V(R p) = V(p)`` for every
operator ``R`` of it; its Fourier transform then has ``F(R k) = F(k)`` with ``k = (kx, ky,
kz)``. The groups are those of RELION's ``--sym`` that a chiral molecule can have, with
RELION's axes:

- ``Cn``: an n-fold axis along z (``n`` operators);
- ``Dn``: ``Cn`` and a 2-fold axis along x (``2n``);
- ``T``: a 3-fold axis along z and a 2-fold axis in the yz plane, along ``(0, √2, 1) / √3``
  (12);
- ``O``: 4-fold axes along x, y and z (24);
- ``I`` (``I2``, RELION's default): 2-fold axes along x, y and z, a 5-fold axis along
  ``(0, φ, 1)`` (φ the golden ratio, "Crowther 222"); ``I1``: the same with the 5-fold along
  ``(0, 1, φ)``; ``I3``: a 5-fold axis along z and another along ``(2, 0, -1) / √5``;
  ``I4``: along z and ``(2, 0, 1) / √5`` (60 each).

Names are read as RELION reads them, in either case (``c4`` is ``C4``). RELION's groups with
mirrors or an inversion (``Cnv``, ``Cnh``, ``Sn``, ``Dnh``, ``Dnd``, ``Th``, ``Td``, ``Oh``,
``Ih``, ``Ci``, ``Cs``) and ``I5`` (which RELION 3.1 does not implement) are refused. Each
group is the closure of its generators; ``tests/test_symmetry_relion.py`` holds every set to
the matrices ``relion_refine --sym <name> --print_symmetry_ops`` prints.
"""

from __future__ import annotations

import math
import re
from functools import cache

import torch

__all__ = [
    "SYMMETRY_FORMS",
    "canonical_symmetry",
    "is_asymmetric",
    "symmetry_operators",
]

SYMMETRY_FORMS = "C<n> or D<n> (n >= 1), T, O, I (= I2) or I1-I4, as RELION's --sym"

_PHI = (1 + math.sqrt(5)) / 2
_NAME = re.compile(r"^(?P<kind>[CD])(?P<n>[1-9][0-9]*)$|^(?P<poly>T|O|I[1-4]?)$")


def canonical_symmetry(name: str) -> str:
    """``name`` in RELION's spelling (upper case; ``I`` is ``I2``), or a ValueError that
    names the forms accepted."""
    text = str(name).strip().upper()
    match = _NAME.match(text)
    if match is None:
        raise ValueError(f"not a point group: expected {SYMMETRY_FORMS}, got {name!r}")
    return "I2" if text == "I" else text


def is_asymmetric(name: str) -> bool:
    """True for ``C1`` (one operator, the identity): nothing to symmetrise."""
    return canonical_symmetry(name) == "C1"


def symmetry_operators(
    name: str,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(n_ops, 3, 3)``: the rotations ``R`` of the point group ``name`` (see the module),
    acting on ``(x, y, z)`` column vectors; the identity first, the rest in a fixed order.
    ``n_ops`` is 1 for ``C1``, n for ``Cn``, 2n for ``Dn``, 12, 24 and 60 for T, O, I."""
    return torch.tensor(_operators(canonical_symmetry(name)), dtype=dtype, device=device)


def _rotation(axis: tuple[float, float, float], turns: float) -> list[list[float]]:
    """The active rotation by ``turns · 2π`` about ``axis`` (Rodrigues' formula)."""
    norm = math.sqrt(sum(a * a for a in axis))
    x, y, z = (a / norm for a in axis)
    angle = 2 * math.pi * turns
    c, s, t = math.cos(angle), math.sin(angle), 1 - math.cos(angle)
    return [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]


def _generators(name: str) -> list[list[list[float]]]:
    """Rotations that generate the group ``name`` (canonical)."""
    z, x = (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)
    if name[0] in "CD" and name[1:].isdigit():
        n = int(name[1:])
        generators = [_rotation(z, 1 / n)]
        return [*generators, _rotation(x, 1 / 2)] if name[0] == "D" else generators
    if name == "T":
        return [_rotation(z, 1 / 3), _rotation((0.0, math.sqrt(2), 1.0), 1 / 2)]
    if name == "O":
        return [_rotation(z, 1 / 4), _rotation(x, 1 / 4)]
    fivefold = {
        "I1": [(0.0, 1.0, _PHI), x],
        "I2": [(0.0, _PHI, 1.0), x],
        "I3": [z, (2.0, 0.0, -1.0)],
        "I4": [z, (2.0, 0.0, 1.0)],
    }[name]
    return [_rotation(fivefold[0], 1 / 5)] + (
        [_rotation(x, 1 / 2), _rotation(z, 1 / 2)] if name in ("I1", "I2") else
        [_rotation(fivefold[1], 1 / 5)]
    )  # fmt: skip


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][m] * b[m][j] for m in range(3)) for j in range(3)] for i in range(3)]


def _key(r: list[list[float]]) -> tuple[float, ...]:
    return tuple(round(v, 6) + 0.0 for row in r for v in row)  # + 0.0: -0.0 is 0.0


@cache
def _operators(name: str) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """The closure of the generators under products: identity first, then in the order the
    products first reach each element (breadth first)."""
    identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    generators = _generators(name)
    found = {_key(identity): identity}
    frontier = [identity]
    while frontier:
        new = []
        for r in frontier:
            for g in generators:
                product = _matmul(g, r)
                key = _key(product)
                if key not in found and len(found) < 1000:
                    found[key] = product
                    new.append(product)
        frontier = new
    return tuple(tuple(tuple(row) for row in r) for r in found.values())
