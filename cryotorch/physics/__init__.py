"""Fourier-space physics: shells, FSC (and, as they land, CTF, slices, masks, filters)."""
