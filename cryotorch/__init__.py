"""cryotorch: 3D classification of cryo-EM particles in PyTorch."""

__version__ = "0.1.0"
