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
import sys
import tempfile
from pathlib import Path

import numpy as np

from cryotorch.errors import InputError
from cryotorch.io import ParticleImages, read_particles, write_particles
from cryotorch.io.example import write_example_star
from cryotorch.particles import ParticleTable

__all__ = ["convert", "main"]


def convert(
    source: Path,
    target: Path,
    data_dir: Path | None = None,
    passthrough: Path | None = None,
    pixel_size: float | None = None,
    star_version: str = "3.1",
    relative_paths: bool = False,
    check_stacks: bool = True,
) -> ParticleTable:
    """Read ``source``, check its stacks, write ``target``; return the table that was read."""
    table = read_particles(
        source, data_dir=data_dir, passthrough=passthrough, pixel_size=pixel_size
    )
    if check_stacks:
        ParticleImages(table).close()  # opening checks every stack header against the table
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
    p.add_argument("--no-check-stacks", action="store_true", help="do not open the stack headers")
    p.add_argument(
        "--demo-dir", type=Path, help="where the demo writes (default: a temporary folder)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.input is None:
            if args.demo_dir is not None:
                return demo(args.demo_dir)
            with tempfile.TemporaryDirectory(prefix="cryotorch-demo-") as tmp:
                return demo(Path(tmp))
        if args.output is None:
            _parser().error("give both an input and an output file")
        table = convert(
            args.input,
            args.output,
            data_dir=args.data_dir,
            passthrough=args.passthrough,
            pixel_size=args.pixel_size,
            star_version=args.star_version,
            relative_paths=args.relative_paths,
            check_stacks=not args.no_check_stacks,
        )
    except InputError as exc:
        print(f"cryotorch-convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(table)} particles, {len(table.optics)} optics groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
