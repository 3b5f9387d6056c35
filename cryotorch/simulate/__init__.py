"""Simulated particle data sets with known classes."""
