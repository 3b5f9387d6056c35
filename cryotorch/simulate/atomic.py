"""Atomic models (PDB/mmCIF, through gemmi) to maps, and the built-in pair of structures.

The built-in pair is adenylate kinase, open (PDB 4AKE) and closed (PDB 1AKE), shipped with
cryotorch in ``simulate/data/`` (from the registry package MDAnalysisTests; see the README
there): two real conformations of one protein (214 residues), the LID and NMP domains closing
over the core.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import gemmi
import numpy as np

from cryotorch.errors import InputError

__all__ = [
    "atomic_model_to_map",
    "builtin_structures",
    "read_model_coordinates",
    "write_interpolated_model",
]


def builtin_structures() -> list[Path]:
    """Paths of the built-in open and closed adenylate kinase models (gzipped PDB files shipped
    with cryotorch; their source and licence are in ``cryotorch/simulate/data/README.md``)."""
    data = files("cryotorch.simulate") / "data"
    return [Path(str(data / "adk_open.pdb.gz")), Path(str(data / "adk_closed.pdb.gz"))]


def _read(path: Path) -> gemmi.Structure:
    if not path.is_file():
        raise InputError(path, None, "file does not exist")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise InputError(path, None, f"not a readable PDB/mmCIF model ({exc})") from exc
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, None, "the model has no atoms")
    return st


def read_model_coordinates(path: str | os.PathLike[str], ca_only: bool = False) -> np.ndarray:
    """``(n, 3)`` Å: the atom (or only CA) positions of the first model, in file order."""
    st = _read(Path(path))
    return np.array(
        [
            [a.pos.x, a.pos.y, a.pos.z]
            for ch in st[0]
            for r in ch
            for a in r
            if not ca_only or a.name == "CA"
        ]
    )


def _kabsch(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation ``r`` and translation ``t`` with ``mobile @ r.T + t`` closest to ``target``."""
    mc, tc = mobile.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((mobile - mc).T @ (target - tc))
    sign = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1, 1, sign]) @ u.T
    return r, tc - mc @ r.T


def atomic_model_to_map(
    path: str | os.PathLike[str],
    box: int,
    pixel_size: float,
    bfactor: float = 50.0,
    centre: np.ndarray | None = None,
    superpose_onto: np.ndarray | None = None,
) -> np.ndarray:
    """Electron-scattering map of a model's first model: ``(box, box, box)`` float32, ``[z, y, x]``.

    Every atom gets the B-factor ``bfactor`` (Å²); gemmi's ``DensityCalculatorE`` puts the
    electron form factors on the grid (band-limited at 2 · pixel size). ``centre`` (Å, the
    point put at voxel ``box // 2``) defaults to the centroid of the atoms. With
    ``superpose_onto`` (``(n_ca, 3)`` CA positions of a reference model, same length), the
    model is first moved onto it by a least-squares fit of its CA atoms.
    """
    path = Path(path)
    st = _read(path)
    xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in st[0] for r in ch for a in r])
    if superpose_onto is not None:
        ca = read_model_coordinates(path, ca_only=True)
        if len(ca) != len(superpose_onto):
            raise InputError(
                path,
                "CA",
                f"has {len(ca)} CA atoms, the reference {len(superpose_onto)}: cannot superpose",
            )
        r, t = _kabsch(ca, superpose_onto)
        xyz = xyz @ r.T + t
    centre = xyz.mean(0) if centre is None else np.asarray(centre, dtype=np.float64)
    xyz = xyz - centre + (box // 2) * pixel_size
    extent = box * pixel_size
    if (xyz < 0).any() or (xyz >= extent).any():
        raise InputError(path, "box", f"the model does not fit in a box of {box} × {pixel_size} Å")
    i = 0
    for ch in st[0]:
        for res in ch:
            for atom in res:
                atom.pos = gemmi.Position(*xyz[i])
                atom.b_iso = bfactor
                i += 1
    st.cell = gemmi.UnitCell(extent, extent, extent, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    st.setup_cell_images()
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2 * pixel_size
    calc.set_grid_cell_and_spacegroup(st)
    calc.grid.set_size(box, box, box)
    calc.add_model_density_to_grid(st[0])
    calc.grid.symmetrize_sum()
    return np.ascontiguousarray(np.array(calc.grid, copy=True).transpose(2, 1, 0), dtype=np.float32)


def write_interpolated_model(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    fraction: float,
    output: str | os.PathLike[str],
) -> Path:
    """Write a model whose atoms lie ``fraction`` of the way from model a to model b.

    The two models must list the same atoms in the same order (two conformations of one
    system); b is first superposed on a by its CA atoms. ``fraction = 0`` gives a, ``1`` gives
    b (superposed). A small ``fraction`` makes a small conformational change.
    """
    a, b = _read(Path(path_a)), _read(Path(path_b))
    xa = np.array([[t.pos.x, t.pos.y, t.pos.z] for ch in a[0] for r in ch for t in r])
    xb = np.array([[t.pos.x, t.pos.y, t.pos.z] for ch in b[0] for r in ch for t in r])
    if xa.shape != xb.shape:
        raise InputError(
            path_b, "atoms", f"has {len(xb)} atoms, {path_a} has {len(xa)}: cannot interpolate"
        )
    r, t = _kabsch(
        read_model_coordinates(path_b, ca_only=True), read_model_coordinates(path_a, ca_only=True)
    )
    xb = xb @ r.T + t
    mixed = (1 - fraction) * xa + fraction * xb
    i = 0
    for ch in a[0]:
        for res in ch:
            for atom in res:
                atom.pos = gemmi.Position(*mixed[i])
                i += 1
    output = Path(output)
    a.write_pdb(str(output))
    return output
