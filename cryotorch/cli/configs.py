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
from typing import Any, TextIO

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cryotorch.errors import InputError, InputWarning, OutputError
from cryotorch.io.atomic import atomic_path

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
    """Where this job writes: ``cfg.output_dir`` (``cfg``: a config or
    :class:`~cryotorch.cli.schema.RunConfig`), or in a ``-m`` sweep Hydra's folder for the job,
    ``output_dir/<job number>``. A single run's folder is made by the program, not by Hydra
    (``hydra.run.dir`` is ``.``), so that a refused run leaves nothing behind."""
    if in_sweep():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.output_dir)


def in_sweep() -> bool:
    """Whether this is a job of a Hydra sweep (``-m``), whose folder Hydra has made."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def command_line(program: str) -> str:
    """The command line of this Hydra job, ``program`` and its overrides quoted for a shell
    (outside a Hydra application, e.g. from Python: ``program`` and "(from Python)")."""
    if not HydraConfig.initialized():
        return f"{program} (from Python)"
    return shlex.join([program, *HydraConfig.get().overrides.task])


def config_yaml(config: Any) -> str:
    """The checked configuration ``config`` (a dataclass or DictConfig) as YAML, every key."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_job_record(output_dir: Path, config: Any) -> None:
    """Record the run's whole configuration in ``output_dir/.hydra/config.yaml`` (every key,
    defaults included: ``config`` is the checked config, a dataclass or DictConfig) and the
    command line's overrides in ``.hydra/overrides.yaml``, where Hydra users look for them.
    Written once the inputs are checked (Hydra's own record is switched off in the configs
    because Hydra writes it before anything is checked)."""
    record = Path(output_dir) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for name, text in (
        ("config.yaml", config_yaml(config)),
        ("overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides))),
    ):
        with atomic_path(record / name) as tmp:
            tmp.write_text(text)


def print_input_warnings(program: str) -> None:
    """Print every :class:`~cryotorch.errors.InputWarning` as one line,
    ``program: warning: message``, on standard error (no source line, no category)."""
    show = warnings.showwarning

    def one_line(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, InputWarning):
            print(f"{program}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


def run_reporting_input_errors(
    program: str, run: Callable[[DictConfig], object], cfg: DictConfig, resumable: bool = False
) -> None:
    """``run(cfg)`` inside a ``@hydra.main`` function: Hydra would report an exception with a
    traceback, so bad input is printed as one line and the process exits with status 2, and
    Ctrl-C (SIGINT) as one line, with the command that continues the run if it is
    ``resumable``, and status 130. A file that cannot be written (a full disk, a read-only
    folder) is one line naming it, with that command, and status 1. Input warnings are
    printed as one line each."""
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
    except OSError as exc:  # a full disk, a read-only or vanished folder: not the input's fault
        text = str(exc) if isinstance(exc, OutputError) else _os_error(exc)
        hint = f"; once that is fixed, continue it: {resume_command(program)}" if resumable else ""
        print(f"{program}: error: {text}{hint}", file=sys.stderr)
        sys.exit(1)


def _os_error(exc: OSError) -> str:
    """An operating-system error in one line, naming the file where it has one."""
    reason = exc.strerror or str(exc).splitlines()[0]
    return f"{exc.filename}: {reason}" if exc.filename else reason


def resume_command(program: str) -> str:
    """This command line with ``resume=true`` (in place of any ``resume=`` it had)."""
    args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "+resume="))]
    return shlex.join([program, *args, "resume=true"])


def check_command_line(program: str, config_name: str, args: list[str]) -> None:
    """Compose ``config_name`` with the command line's overrides ``args`` before Hydra runs
    the job: a misspelt key, an unknown option of a group or a value the override grammar
    cannot parse is printed as one line, ``program: error: configuration: ...``, with exit
    status 2 (Hydra would print several lines and exit with 1). Sweeps (``-m``) and Hydra's
    own flags (``--help``, ``--cfg``, ...) are left to Hydra."""
    if any(arg.startswith("-") for arg in args):
        return
    try:
        compose_config(config_name, args)
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"{program}: error: configuration: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)


def _one_line(exc: BaseException) -> str:
    """Hydra's message for a bad override, in one line: its text up to the search path and
    the advice on stack traces, the key named where OmegaConf gives one."""
    key = getattr(exc.__cause__, "full_key", None) or getattr(exc, "full_key", None)
    if key and "is not in struct" in f"{exc} {exc.__cause__}":
        return f"{key}: not a key of the configuration"
    text = ""
    for line in str(exc).splitlines():
        if line.startswith(("Config search path", "Set the environment variable", "See https")):
            break
        if line.strip():
            text += (
                "; " if text and not text.endswith(":") else " " if text else ""
            ) + line.strip()
    text = text or type(exc).__name__
    return f"{key}: {text}" if key else text
