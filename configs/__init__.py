"""cryotorch's Hydra configs, installed as the package ``cryotorch.configs``.

The folder is the repository's top-level ``configs/``; pyproject.toml maps it into the package
so that an installed cryotorch (wheel or ``pip install .``) finds its configs through Hydra's
``pkg://cryotorch.configs`` search path. It holds no code.
"""
