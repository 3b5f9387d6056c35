"""RELION's particle STAR vocabulary: the required columns, the columns RELION 3.0 and 3.1+
name differently (optics per particle or in ``data_optics``, origins in pixels or Å), the
columns a ParticleTable holds, and what a 3.0 output cannot carry.
"""

from __future__ import annotations

from typing import Literal

from cryotorch.particles import SourceRecord

__all__ = [
    "OPTICS_COLUMNS_30",
    "ORIGIN_COLUMNS_30",
    "ORIGIN_COLUMNS_31",
    "REQUIRED_OPTICS_COLUMNS",
    "REQUIRED_PARTICLE_COLUMNS",
    "TABLE_COLUMNS",
    "StarVersion",
    "star_columns_not_written",
]

StarVersion = Literal["3.0", "3.1"]

REQUIRED_PARTICLE_COLUMNS = (
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
)
REQUIRED_OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
# Columns a 3.0 file carries per particle that 3.1 moves to the optics block (or renames).
OPTICS_COLUMNS_30 = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnDetectorPixelSize",
    "rlnMagnification",
)
ORIGIN_COLUMNS_30 = ("rlnOriginX", "rlnOriginY")
ORIGIN_COLUMNS_31 = ("rlnOriginXAngst", "rlnOriginYAngst")
# Columns whose values a ParticleTable holds, so that every output format carries them (3.0
# and 3.1 names, particle and optics columns). rlnOpticsGroupName is held but has no .cs field.
TABLE_COLUMNS = frozenset(
    REQUIRED_PARTICLE_COLUMNS
    + REQUIRED_OPTICS_COLUMNS
    + OPTICS_COLUMNS_30
    + ORIGIN_COLUMNS_30
    + ORIGIN_COLUMNS_31
    + (
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnCtfScalefactor",
        "rlnRandomSubset",
        "rlnImagePixelSize",
        "rlnPixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",  # only 2 is read
        "rlnCtfDataAreCtfPremultiplied",  # only 0 is read
    )
)


def star_columns_not_written(source: SourceRecord, version: StarVersion) -> list[str]:
    """The columns of a STAR ``source`` that :func:`~cryotorch.io.star.write_star` at
    ``version`` does not carry, in the file's order.

    None for the same version, or for 3.0 -> 3.1 (the optics columns move to ``data_optics``,
    pixel origins become Å). For 3.1 -> 3.0, which has no optics block: ``rlnOpticsGroup``
    and the optics columns other than voltage, Cs, amplitude contrast and pixel size (written
    per particle); ``rlnImageDimensionality`` 2 and ``rlnCtfDataAreCtfPremultiplied`` 0 are
    implied, and so are names ``opticsGroup<rlnOpticsGroup>`` (as a 3.0 file read back gives).
    """
    if source.format != "star3.1" or version != "3.0":
        return []
    optics = source.optics
    assert optics is not None  # a RELION 3.1 source always has its data_optics block
    default_names = (
        "rlnOpticsGroupName" in optics
        and (
            optics["rlnOpticsGroupName"].astype(str)
            == "opticsGroup" + optics["rlnOpticsGroup"].astype(str)
        ).all()
    )
    carried = {"rlnOpticsGroupName"} if default_names else set()
    carried |= {
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImagePixelSize",
        "rlnPixelSize",
        "rlnImageDimensionality",
        "rlnCtfDataAreCtfPremultiplied",
    }
    return [c for c in optics.columns if c not in carried]
