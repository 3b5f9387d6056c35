"""The documentation site builds in strict mode: a broken link, a missing page or a reference
mkdocstrings cannot resolve fails the build, and the generated configuration reference lists
every key of the configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
import hooks  # noqa: E402  (docs/hooks.py: the configuration reference)


def _keys(node, prefix: str = "") -> list[str]:
    """Dotted names of a config's leaves."""
    if not OmegaConf.is_dict(node):
        return [prefix]
    out = []
    for key in node:
        value = node._get_node(key)
        out += _keys(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def test_the_configuration_reference_lists_every_key_of_every_group():
    text = hooks.reference()
    configs = REPO / "configs"
    for path in configs.glob("*/default.yaml"):
        cfg = OmegaConf.load(path)
        for key in _keys(cfg):
            assert f"`{path.parent.name}.{key}`" in text, f"{path}: {key} is not in the reference"
    for key in ("output_dir", "resume", "seed", "device", "kernels"):
        assert f"| `{key}` |" in text


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "configuration" / "index.html").is_file()
    assert "data.ignore_stack_pixel_size" in (tmp_path / "configuration" / "index.html").read_text()


def test_the_readmes_links_lead_to_files():
    """The README is read on the repository's page, outside the site: its relative links
    must name files that exist."""
    import re

    text = (REPO / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t]
    assert links, "the README links to the documentation"
    missing = [t for t in links if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
