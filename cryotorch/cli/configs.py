"""Where the Hydra configs are, and how the command-line tools report bad input.

The configs are the repository's top-level ``configs/`` folder, installed as the package
``cryotorch.configs`` (pyproject.toml maps the folder into the package), so that an installed
cryotorch finds them wherever it lives: Hydra reads them through ``pkg://cryotorch.configs``.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cryotorch.errors import InputError, InputWarning

CONFIG_MODULE = "cryotorch.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # for @hydra.main(config_path=...)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """The packaged config ``name`` (e.g. ``"simulate"``) as Hydra composes it with
    ``overrides`` (``key=value``), inside a running Hydra application or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def job_output_dir(cfg: Any) -> Path:
    """Where this job writes: Hydra's job folder when Hydra runs it (``output_dir`` for a
    single run, ``output_dir/<job number>`` in a ``-m`` sweep), else ``cfg.output_dir``
    (``cfg``: a config or :class:`~cryotorch.cli.schema.RunConfig`)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.output_dir)


def print_input_warnings(program: str) -> None:
    """Print every :class:`~cryotorch.errors.InputWarning` as one line,
    ``program: warning: message``, on standard error (no source line, no category)."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"{program}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


def run_reporting_input_errors(
    program: str, run: Callable[[DictConfig], object], cfg, resumable: bool = False
) -> None:
    """``run(cfg)`` inside a ``@hydra.main`` function: Hydra would report an exception with a
    traceback, so bad input is printed as one line and the process exits with status 2, and
    Ctrl-C (SIGINT) as one line, with the command that continues the run if it is
    ``resumable``, and status 130. Input warnings are printed as one line each."""
    print_input_warnings(program)
    try:
        run(cfg)
    except InputError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hint = f"; to continue it: {resume_command(program)}" if resumable else ""
        print(f"{program}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)


def resume_command(program: str) -> str:
    """This command line with ``resume=true`` (in place of any ``resume=`` it had)."""
    args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "+resume="))]
    return shlex.join([program, *args, "resume=true"])
