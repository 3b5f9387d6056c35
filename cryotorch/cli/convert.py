"""``cryotorch-convert``: RELION ``.star`` <-> cryoSPARC ``.cs``, the format following the suffix.

    cryotorch-convert in.star out.cs
    cryotorch-convert in.cs out.star [--passthrough P.cs] [--data-dir DIR] [--star-version 3.0]
    cryotorch-convert                 # demo: converts a small built-in example and checks it

Input is validated in full (columns, stack files, indices, pixel sizes) before anything is
written; output is written atomically. Bad input exits with status 2 and a message naming the
file and field.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from cryotorch.cli.configs import print_input_warnings
from cryotorch.errors import InputError
from cryotorch.io import ParticleImages, read_particles, write_particles
from cryotorch.io.cs import REQUIRED_FIELDS
from cryotorch.io.cs_arrays import field_names
from cryotorch.io.example import write_example_star
from cryotorch.io.mrc import with_image_sizes
from cryotorch.io.star import TABLE_COLUMNS, star_columns_not_written
from cryotorch.io.star_columns import StarVersion
from cryotorch.particles import ParticleTable

__all__ = ["convert", "main", "not_carried"]


def convert(
    source: Path,
    target: Path,
    data_dir: Path | None = None,
    passthrough: Path | None = None,
    pixel_size: float | None = None,
    star_version: StarVersion = "3.1",
    relative_paths: bool = False,
    check_stacks: bool = True,
    check_pixel_size: bool = True,
) -> ParticleTable:
    """Read ``source``, check its stacks, write ``target``; return the table that was written.

    Optics groups whose box the file does not give (RELION 3.0, 3.1 without ``rlnImageSize``)
    get it from their stacks' headers, so that no zero box is written. ``check_pixel_size``
    false trusts the particle file's pixel size whatever the stack headers say.
    """
    table = read_particles(
        source, data_dir=data_dir, passthrough=passthrough, pixel_size=pixel_size
    )
    if check_stacks:  # opening checks every stack header against the table
        with ParticleImages(table, check_pixel_size=check_pixel_size) as images:
            table = images.table
    else:
        table = with_image_sizes(table)
    write_particles(table, target, star_version=star_version, absolute_paths=not relative_paths)
    return table


def max_differences(a: ParticleTable, b: ParticleTable) -> dict[str, float]:
    """Largest per-field differences between two tables of the same particles."""
    return {
        "rotation (matrix entries)": float(np.abs(a.rotation - b.rotation).max()),
        "origin (Å)": float(np.abs(a.origin_angstrom - b.origin_angstrom).max()),
        "defocus (Å)": float(
            max(
                np.abs(a.defocus_u_angstrom - b.defocus_u_angstrom).max(),
                np.abs(a.defocus_v_angstrom - b.defocus_v_angstrom).max(),
            )
        ),
        "astigmatism angle (°)": float(
            np.abs(a.astigmatism_angle_deg - b.astigmatism_angle_deg).max()
        ),
        "pixel size (Å)": float(np.abs(a.pixel_size_angstrom - b.pixel_size_angstrom).max()),
        "same images": float(
            np.array_equal(a.image_path, b.image_path)
            and np.array_equal(a.image_index, b.image_index)
        ),
    }


# The .cs fields a ParticleTable holds, and so a STAR output carries (RELION 3.0: but the last two).
CS_TABLE_FIELDS = (
    *REQUIRED_FIELDS,  # those every .cs input has
    "ctf/phase_shift_rad",
    "ctf/bfactor",
    "ctf/scale",
    "alignments3D/shift",
    "alignments3D/psize_A",
    "alignments3D/split",
    "blob/shape",  # rlnImageSize, in data_optics
    "ctf/exp_group_id",  # rlnOpticsGroup
)


def not_carried(table: ParticleTable, target: Path, star_version: StarVersion = "3.1") -> list[str]:
    """The input columns or fields of ``table``'s file that writing it to ``target`` drops.

    In the input's own names and order (optics block first): those the output format has
    nothing for, i.e. that the table does not hold (a .cs output carries the table; a STAR
    output carries the table and, from a STAR input, its other columns but for
    :func:`~cryotorch.io.star.star_columns_not_written`). ``rlnOpticsGroupName`` counts as
    carried into a .cs when every name is ``opticsGroup<number>``, as a .cs read back gives.
    .cs fields are shortened by :func:`_shorten_fields`.
    """
    source = table.source
    to_star = Path(target).suffix.lower() == ".star"
    if source is None or (source.format == "cs" and not to_star):
        return []
    if source.format.startswith("star"):
        if to_star:
            return star_columns_not_written(source, star_version)
        names = [*(source.optics.columns if source.optics is not None else ()), *source.particles]
        carried = set(TABLE_COLUMNS)
        assert table.optics.number is not None  # OpticsGroups.__post_init__ always sets it
        if table.optics.name.tolist() == [f"opticsGroup{g}" for g in table.optics.number]:
            carried.add("rlnOpticsGroupName")
        return [c for c in dict.fromkeys(names) if c not in carried]
    fields = list(field_names(source.particles))  # a .cs source: a structured array
    carried = set(CS_TABLE_FIELDS[:-2] if star_version == "3.0" else CS_TABLE_FIELDS)
    return _shorten_fields([f for f in fields if f not in carried], fields)


def _shorten_fields(dropped: list[str], fields: list[str]) -> list[str]:
    """Dropped .cs field names, shortened for one line: when every field under them is
    dropped, numbered prefixes as one entry (``alignments_class_0..11/*``) and a prefix of
    three or more fields as ``location/*``."""
    prefix = {f: f.split("/")[0] for f in fields if "/" in f}
    numbered = {p: re.fullmatch(r"(.*\D)(\d+)", p) for p in set(prefix.values())}

    def all_dropped(prefixes: set[str]) -> bool:
        return all(f in dropped for f in fields if prefix.get(f) in prefixes)

    short = []
    for f in dropped:
        p = prefix.get(f)
        match = numbered.get(p) if p is not None else None
        if match:
            same = {
                int(m.group(2)): q
                for q, m in numbered.items()
                if m is not None and m.group(1) == match.group(1)
            }
            if len(same) > 1 and all_dropped(set(same.values())):
                lo, hi = min(same), max(same)
                numbers = f"{lo}..{hi}" if len(same) == hi - lo + 1 else "*"
                short.append(f"{match.group(1)}{numbers}/*")
                continue
        if p is not None and sum(prefix.get(g) == p for g in fields) >= 3 and all_dropped({p}):
            short.append(f"{p}/*")
        else:
            short.append(f)
    return list(dict.fromkeys(short))


def _print_not_carried(table: ParticleTable, target: Path, star_version: StarVersion) -> None:
    """Print :func:`not_carried`'s list as one line on standard error, if it is not empty."""
    dropped = not_carried(table, target, star_version)
    if not dropped:
        return
    assert table.source is not None  # not_carried drops nothing from a table without one
    if target.suffix.lower() == ".cs":
        why = "cryotorch has no .cs field for these STAR columns"
    elif table.source.format == "cs":
        why = "cryotorch has no STAR column for these .cs fields"
    else:  # the one STAR -> STAR conversion that drops anything: 3.1 -> 3.0
        why = "a RELION 3.0 file has no optics block"
    print(
        f"cryotorch-convert: note: not carried into {target} ({why}): {', '.join(dropped)}",
        file=sys.stderr,
    )


def demo(output_dir: Path) -> int:
    """Write the built-in example, convert it .star -> .cs -> .star and report the differences."""
    star = write_example_star(output_dir)
    cs, back = output_dir / "particles.cs", output_dir / "particles_from_cs.star"
    original = convert(star, cs)
    convert(cs, back)
    diffs = max_differences(original, read_particles(back))
    print(f"Built-in example: {len(original)} particles, 2 optics groups, in {output_dir}")
    print(f"  {star.name} -> {cs.name} -> {back.name}; largest differences after the round trip:")
    for name, value in diffs.items():
        print(f"    {name:28s} {value:.3g}")
    ok = diffs["same images"] == 1.0 and diffs["rotation (matrix entries)"] < 1e-5
    print("round trip OK" if ok else "round trip FAILED")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryotorch-convert",
        description="Convert particle files between RELION .star and cryoSPARC .cs "
        "(the format follows each file's suffix). With no arguments, run a demo on a "
        "small built-in example.",
    )
    p.add_argument("input", nargs="?", type=Path, help="input .star or .cs")
    p.add_argument("output", nargs="?", type=Path, help="output .star or .cs")
    p.add_argument("--data-dir", type=Path, help="folder that relative stack paths resolve against")
    p.add_argument("--passthrough", type=Path, help="cryoSPARC passthrough .cs to merge by uid")
    p.add_argument(
        "--pixel-size", type=float, help="pixel size (Å) for RELION 3.0 files lacking one"
    )
    p.add_argument(
        "--star-version", choices=["3.0", "3.1"], default="3.1", help="STAR flavour to write"
    )
    p.add_argument(
        "--relative-paths",
        action="store_true",
        help="write stack paths relative to the output's folder (default: absolute) where the "
        "input's own paths cannot be kept",
    )
    p.add_argument(
        "--no-check-stacks",
        action="store_true",
        help="do not check the stacks against the table (a stack header is still read where "
        "the file gives no box size)",
    )
    p.add_argument(
        "--ignore-stack-pixel-size",
        action="store_true",
        help="use the particle file's pixel size whatever the stack headers say (as RELION "
        "does); by default a header that disagrees is an error (0 and 1.0 count as not set)",
    )
    p.add_argument(
        "--demo-dir", type=Path, help="where the demo writes (default: a temporary folder)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    print_input_warnings("cryotorch-convert")
    args = _parser().parse_args(argv)
    try:
        if args.input is None:
            if args.demo_dir is not None:
                return demo(args.demo_dir)
            with tempfile.TemporaryDirectory(prefix="cryotorch-demo-") as tmp:
                return demo(Path(tmp))
        if args.output is None:
            _parser().error("give both an input and an output file")
        if args.pixel_size is not None and not 0 < args.pixel_size <= 100:
            # The readers' range; past it the file was blamed, as its own rlnImagePixelSize.
            print(
                f"cryotorch-convert: error: --pixel-size: {args.pixel_size} Å is not a "
                "plausible pixel size: expected (0, 100] Å",
                file=sys.stderr,
            )
            return 2
        table = convert(
            args.input,
            args.output,
            data_dir=args.data_dir,
            passthrough=args.passthrough,
            pixel_size=args.pixel_size,
            star_version=args.star_version,
            relative_paths=args.relative_paths,
            check_stacks=not args.no_check_stacks,
            check_pixel_size=not args.ignore_stack_pixel_size,
        )
    except InputError as exc:
        print(f"cryotorch-convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(table)} particles, {len(table.optics)} optics groups)")
    _print_not_carried(table, args.output, args.star_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
