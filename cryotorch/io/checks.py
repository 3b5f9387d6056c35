"""Range checks of the physical values a particle file gives, in the file's own vocabulary.

A value outside these ranges is not a real measurement but a typo, a unit mix-up or a
corrupted row, and one such particle would turn the whole run's posteriors into NaN (a
B-factor of -10⁶ Å² overflows the CTF's envelope) or silently zero the maps. Each is refused
naming the file, the field (RELION's or cryoSPARC's name) and the first bad row. The ranges
are wide on purpose: every real data set lies far inside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryotorch.errors import InputError
from cryotorch.particles import ParticleTable

__all__ = ["CS_NAMES", "RANGES", "STAR_NAMES", "check_physical_ranges"]

# quantity -> (lowest, highest, inclusive low, unit, what it is)
RANGES: dict[str, tuple[float, float, bool, str, str]] = {
    "pixel_size_angstrom": (0.0, 100.0, False, "Å", "pixel size"),
    "voltage_kv": (10.0, 3000.0, True, "kV", "acceleration voltage"),
    "spherical_aberration_mm": (0.0, 20.0, True, "mm", "spherical aberration"),
    "amplitude_contrast": (0.0, 1.0, True, "", "amplitude contrast (a fraction)"),
    "defocus_u_angstrom": (-200_000.0, 200_000.0, True, "Å", "defocus (20 µm at most)"),
    "defocus_v_angstrom": (-200_000.0, 200_000.0, True, "Å", "defocus (20 µm at most)"),
    "ctf_bfactor": (-1000.0, 1000.0, True, "Å²", "CTF B-factor"),
    "ctf_scale": (0.0, 100.0, False, "", "CTF scale factor"),
    # Any angle is one, but past float32's range (the CTF's) cos() is NaN: 100 turns at most.
    "astigmatism_angle_deg": (-36000.0, 36000.0, True, "°", "astigmatism angle (100 turns)"),
    "phase_shift_deg": (-36000.0, 36000.0, True, "°", "phase shift (100 turns)"),
}

# Quantities of the optics block (RELION 3.1+): named by optics group, not by particle row.
OPTICS_QUANTITIES = {
    "pixel_size_angstrom",
    "voltage_kv",
    "spherical_aberration_mm",
    "amplitude_contrast",
}
# The same quantities as each format names them.
STAR_NAMES = {
    "pixel_size_angstrom": "rlnImagePixelSize",
    "voltage_kv": "rlnVoltage",
    "spherical_aberration_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "defocus_u_angstrom": "rlnDefocusU",
    "defocus_v_angstrom": "rlnDefocusV",
    "ctf_bfactor": "rlnCtfBfactor",
    "ctf_scale": "rlnCtfScalefactor",
    "astigmatism_angle_deg": "rlnDefocusAngle",
    "phase_shift_deg": "rlnPhaseShift",
}
CS_NAMES = {
    "pixel_size_angstrom": "blob/psize_A",
    "voltage_kv": "ctf/accel_kv",
    "spherical_aberration_mm": "ctf/cs_mm",
    "amplitude_contrast": "ctf/amp_contrast",
    "defocus_u_angstrom": "ctf/df1_A",
    "defocus_v_angstrom": "ctf/df2_A",
    "ctf_bfactor": "ctf/bfactor",
    "ctf_scale": "ctf/scale",
    "astigmatism_angle_deg": "ctf/df_angle_rad",  # named in degrees, as the table holds it
    "phase_shift_deg": "ctf/phase_shift_rad",
}


def check_physical_ranges(table: ParticleTable, path: Path, names: dict[str, str]) -> None:
    """Refuse (InputError) the first particle whose value of a :data:`RANGES` quantity lies
    outside its range, naming ``path``, the file's name for the field (``names``) and the row
    (1-based, in the file's particle order)."""
    for quantity, (low, high, inclusive, unit, what) in RANGES.items():
        values = np.asarray(getattr(table, quantity), dtype=np.float64)
        below = values < low if inclusive else values <= low
        bad = np.flatnonzero(below | (values > high))
        if not bad.size:
            continue
        row = int(bad[0])
        field, where = names[quantity], f"row {row + 1}"
        if quantity in OPTICS_QUANTITIES and table.source is not None:
            if table.source.format == "star3.1":
                group = table.optics_group[row]
                assert table.optics.number is not None  # OpticsGroups.__post_init__ sets it
                field, where = f"data_optics: {field}", f"optics group {table.optics.number[group]}"
        bracket = "[" if inclusive else "("
        raise InputError(
            path,
            field,
            f"{where}: {values[row]:g} {unit}".rstrip()
            + f" is not a plausible {what}: expected {bracket}{low:g}, {high:g}]"
            + (f" {unit}" if unit else ""),
        )
