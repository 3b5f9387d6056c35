"""MkDocs hook: the configuration reference, generated from the YAML files in ``configs/``.

A page containing ``<!-- config-reference -->`` gets, in its place, one section per config
file (its leading comment block, then a table of every key: its dotted name, default and the
comment on its line), so that the reference is written once, in the configs themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MARKER = "<!-- config-reference -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(#\s?(?P<note>.*))?$")


def _escape(text: str) -> str:
    return text.replace("|", "\\|").strip()


def config_table(path: Path, prefix: str) -> str:
    """One file's leading comments and a Markdown table of its keys (``prefix.key``)."""
    lines = path.read_text().splitlines()
    intro, code = [], []
    for line in lines:
        if not line.startswith("#"):
            break
        if line.startswith("#   "):  # an example command
            code.append(line[4:])
        elif not line.startswith("# @package"):
            intro.append(line[1:].strip())
    rows, stack = [], []  # stack: (indent, key) of the enclosing mappings
    in_hydra = False
    for line in lines:
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m["indent"]), m["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0:
            in_hydra = key in ("hydra", "defaults")
        value = m["value"].strip()
        if not in_hydra and value:
            name = ".".join([*([prefix] if prefix else []), *[k for _, k in stack], key])
            rows.append(f"| `{name}` | `{_escape(value)}` | {_escape(m['note'] or '')} |")
        if not value:
            stack.append((indent, key))
    text = " ".join(intro) + "\n\n" if intro else ""
    if code:
        text += "```bash\n" + "\n".join(code) + "\n```\n\n"
    if rows:
        column = "value" if path.parent.name == "experiment" else "default"
        text += f"| key | {column} | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    return text


def reference() -> str:
    """Every config file: classify.yaml, then its groups, then simulate.yaml."""
    parts = ["## `classify.yaml`\n", config_table(CONFIGS / "classify.yaml", "")]
    for group in sorted(p for p in CONFIGS.iterdir() if p.is_dir() and p.name != "__pycache__"):
        for option in sorted(group.glob("*.yaml")):
            prefix = "" if group.name == "experiment" else group.name
            title = f"`{group.name}={option.stem}`"
            parts += [f"### {title}\n", config_table(option, prefix)]
    parts += [
        "## `simulate.yaml` (cryotorch-simulate)\n",
        config_table(CONFIGS / "simulate.yaml", ""),
    ]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
