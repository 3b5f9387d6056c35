"""``cryotorch-classify``: 3D classification without alignment (Hydra-configured).

    cryotorch-classify                                   # built-in simulated demo, prints accuracy
    cryotorch-classify data.particles=P.star model.num_classes=3 output_dir=run1
    cryotorch-classify experiment=hard_after_anneal
    cryotorch-classify -m model.num_classes=2,3,4

See ``configs/classify.yaml`` and its groups for every option.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cryotorch.cli.configs import (
    CONFIG_PATH,
    check_command_line,
    command_line,
    compose_config,
    config_yaml,
    in_sweep,
    job_output_dir,
    run_reporting_input_errors,
    save_job_record,
)
from cryotorch.cli.continuing import continue_arguments, continue_source, record_continuation
from cryotorch.cli.custom import make_custom_modules
from cryotorch.cli.lock import folder_lock
from cryotorch.cli.outputs import STAGING_NAME, write_iteration, write_outputs
from cryotorch.cli.schema import RunConfig, read_run_config
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify
from cryotorch.engine.distributed import ProcessGroup, init_from_environment
from cryotorch.engine.regularisers import Regulariser
from cryotorch.engine.state import (
    CHECKPOINT_FORMAT,
    ClassificationResult,
    check_continuable,
    check_resumable,
)
from cryotorch.errors import InputError
from cryotorch.evaluation import TRUE_CLASSES, classification_accuracy, read_true_classes
from cryotorch.inputs import read_initial_maps, read_masks
from cryotorch.io import ParticleImages, read_particles
from cryotorch.io.atomic import stale_temporary_files
from cryotorch.io.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from cryotorch.monitor import RunMonitor
from cryotorch.particles import ParticleTable, ReferenceFrame, reference_frame
from cryotorch.physics.fourier import cropped_box_for_resolution
from cryotorch.physics.symmetry import canonical_symmetry

__all__ = ["main", "run"]


def _particles(config: RunConfig, output_dir: Path, simulate: bool = True) -> Path:
    """The particle file to classify: the user's, or the built-in simulation (made now unless
    ``simulate`` is false: then rank 0 has made it; a continued run's is the run's own)."""
    if config.data.particles is not None:
        return Path(config.data.particles)
    source = continue_source(config.continue_from)
    if source is not None:
        return source.parent / "simulated" / "particles.star"
    simulated = output_dir / "simulated" / "particles.star"
    if not simulate or (simulated.is_file() and config.resume):
        return simulated  # simulated by rank 0, or by the run resumed
    from cryotorch.cli.simulate import run as run_simulation

    demo = asdict(config.data.simulate) | {"seed": config.seed}
    overrides = [f"{key}={_override_value(value)}" for key, value in demo.items()]
    return run_simulation(compose_config("simulate", overrides), output_dir / "simulated")


def _override_value(value: object) -> str:
    """``value`` as Hydra's override grammar writes it: ``null``, ``[a,b]`` or the number."""
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return repr(value)


def _inputs_dict(config: RunConfig, star: Path, images: ParticleImages) -> dict:
    """The files a run depends on beyond the engine's settings (a resumed run must use the
    same), and a digest of the particles' content: a particle file edited in place, or its
    stacks rewritten, is not the run's any more."""
    data = config.data
    return {
        "particles": str(data.particles),
        "particles_sha256": _particles_digest(star, data.passthrough, images),
        "reference": str(data.reference),
        "initial_maps": str(data.initial_map_paths()),
    } | _custom_input(config)


def _custom_input(config: RunConfig) -> dict:
    """The user's own modules (``custom.*``), which the settings do not hold: recorded when
    given, so that a run resumes only with the same ones."""
    custom = asdict(config.custom)
    return {"custom": repr(custom)} if any(v is not None for v in custom.values()) else {}


def _particles_digest(star: Path, passthrough: str | None, images: ParticleImages) -> str:
    """sha256 of the particle file (and passthrough file), and of each stack's size and header
    (the first 1024 bytes): 16 hex digits."""
    digest = hashlib.sha256(star.read_bytes())
    if passthrough is not None:
        digest.update(Path(passthrough).read_bytes())
    for stack in sorted({str(path) for path in images.table.image_path}):
        with open(stack, "rb") as f:
            digest.update(f"{os.fstat(f.fileno()).st_size}".encode() + f.read(1024))
    return digest.hexdigest()[:16]


# Files that show a folder holds (part of) a classification run.
RUN_FILES = (CHECKPOINT_NAME, "iterations.csv", "posteriors.npy", "particles.star", "simulated")


def _prepare_output_dir(output_dir: Path, resume: bool, in_place: bool = False) -> Path | None:
    """The checkpoint to resume from (None: start afresh). Refuses a folder holding another
    run unless ``resume`` or the run continues there (``in_place``); removes temporary files a
    killed run left."""
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not (resume or in_place):
        raise InputError(
            output_dir,
            None,
            f"holds another run ({', '.join(found)}): choose another output_dir, "
            "or add resume=true to continue it",
        )
    for stale in stale_temporary_files(output_dir):  # atomic writes cut short by a kill
        stale.unlink()
    shutil.rmtree(output_dir / STAGING_NAME, ignore_errors=True)  # outputs cut short by one
    checkpoint = output_dir / CHECKPOINT_NAME
    if resume and not in_place and not checkpoint.is_file():
        print(f"resume=true: no {CHECKPOINT_NAME} in {output_dir}, starting from the beginning")
    return checkpoint if resume and checkpoint.is_file() else None


def _truth(star: str | Path, n: int, say: Callable[[str], None] = print) -> np.ndarray | None:
    """The true classes ``(n,)`` (0-based) of simulated particles: ``true_classes.txt`` beside
    the particle file (written by ``cryotorch-simulate``), if there is one for all ``n``."""
    path = Path(star).parent / TRUE_CLASSES
    if not path.is_file():
        return None
    truth = read_true_classes(path.parent)
    if truth.shape != (n,):
        say(f"{path} has {truth.shape[0]} lines for {n} particles: no accuracy reported")
        return None
    return truth


def run(cfg: DictConfig) -> dict:
    """Classify as ``cfg`` says; write the outputs; return a summary (accuracy if known).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs this: each reads its share of
    the particles, rank 0 alone simulates, prints and writes.
    """
    config = read_run_config(cfg)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("config", "device", "cuda was asked for, but torch sees no CUDA device")
    if init_from_environment(device.type):
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        try:
            return _run(config, device)
        finally:
            torch.distributed.destroy_process_group()
    return _run(config, device)


def _run(config: RunConfig, device: torch.device) -> dict:
    group = ProcessGroup(device)
    modules = make_custom_modules(config.custom, config.model.num_classes)  # before any write
    output_dir = job_output_dir(config)
    # One run at a time in a folder (rank 0 holds the lock for all ranks).
    made = in_sweep() and output_dir.is_dir() and not any(output_dir.iterdir())
    with folder_lock(output_dir, made=made) if group.is_main else nullcontext():
        source = continue_source(config.continue_from)
        in_place = source is not None and source.parent.resolve() == output_dir.resolve()
        resume_from = _prepare_output_dir(output_dir, config.resume, in_place)
        group.barrier()  # every rank has checked the folder before rank 0 writes to it
        torch.manual_seed(config.seed)
        demo = output_dir / "simulated"
        simulating = config.data.particles is None and source is None and not demo.exists()
        try:
            star = _particles(config, output_dir) if group.is_main else None
            group.barrier()  # rank 0 has simulated the demo data, if asked to
            star = star or _particles(config, output_dir, simulate=False)
            table = _read_table(config, star, output_dir)
            # Everything the run reads is checked before anything is written.
            check = not config.data.ignore_stack_pixel_size
            with ParticleImages(table, check_pixel_size=check) as images:
                start = _start(config, images, star, resume_from, source, in_place)
                return _classify_images(config, images, star, output_dir, start, group, modules)
        except InputError:
            if simulating and group.is_main and not (output_dir / CHECKPOINT_NAME).exists():
                shutil.rmtree(demo, ignore_errors=True)  # the demo data of a run refused
            raise


def _start(
    config: RunConfig,
    images: ParticleImages,
    star: Path,
    resume_from: Path | None,
    source: Path | None,
    in_place: bool,
) -> Start:
    """Where the run starts: afresh, from its own checkpoint (``resume=true``: the settings
    must be the same), or from a run it continues (``continue_from``: what changed is
    printed and recorded)."""
    settings = config.settings()
    d_work = _working_box(images.table, config)[1]
    inputs = _inputs_dict(config, star, images)
    n = len(images.table)
    if resume_from is not None and not in_place:  # this run's own checkpoint: exact
        state = load_checkpoint(resume_from, CHECKPOINT_FORMAT)
        check_resumable(resume_from, state, settings, n, d_work, inputs)
        return Start(
            inputs, state, f"resuming {resume_from} after iteration {state['iteration'] - 1}"
        )
    if source is None:
        return Start(inputs)
    state = load_checkpoint(source, CHECKPOINT_FORMAT)
    changes = check_continuable(source, state, settings, n, d_work, inputs)
    state["finished"] = False
    said = "; ".join(changes) if changes else "no setting changed"
    return Start(
        inputs,
        state,
        f"continuing {source} after iteration {state['iteration'] - 1}: {said}",
        continued=(source, int(state["iteration"]) - 1, changes),
    )


def _working_box(table: ParticleTable, config: RunConfig) -> tuple[ReferenceFrame, int, float]:
    """The maps' frame (the first optics group's box and pixel size), and the working box
    and its pixel size (Å) for the target resolution."""
    frame = reference_frame(table)
    d_work, work_psize = cropped_box_for_resolution(
        frame.box, frame.pixel_size_angstrom, config.model.target_resolution
    )
    return frame, d_work, work_psize


@dataclass
class Start:
    """What a run starts from: ``inputs`` (:func:`_inputs_dict`), a checkpoint's ``state``
    (None: afresh) and the line that says so; ``continued``: the run continued and what
    changed."""

    inputs: dict
    state: dict | None = None
    message: str = ""
    continued: tuple[Path, int, list[str]] | None = None


def _classify_images(
    config: RunConfig,
    images: ParticleImages,
    star: Path,
    output_dir: Path,
    start: Start,
    group: ProcessGroup,
    modules: tuple[Regulariser | None, nn.Module | None] = (None, None),
) -> dict:
    """The run on the opened particle images: the maps and masks it is given, checked and
    cropped; the classification (with the user's own regulariser and similarity layer,
    ``modules``, if any); the outputs (rank 0)."""
    settings, device = config.settings(), group.device
    table = images.table  # with the box of every optics group, from the stacks if need be
    frame, d_work, work_psize = _working_box(table, config)
    d_full = frame.box
    masks = read_masks(config.mask, config.data.reference, images, d_work, work_psize)
    paths, k = config.data.initial_map_paths(), settings.model.num_classes
    initial_maps = read_initial_maps(paths, k, images, d_work)
    inputs, resume_state = start.inputs, start.state
    symmetry = canonical_symmetry(settings.model.symmetry)
    monitor = RunMonitor(
        output_dir,
        tensorboard=config.logger.tensorboard and group.is_main,
        quiet=config.logger.quiet or not group.is_main,
        first_step=0 if resume_state is None else int(resume_state["iteration"]),
        num_classes=k,
        report_every=config.logger.report_every if group.is_main else 0,
        report_header=(command_line("cryotorch-classify"), config_yaml(config)),
        log_name="classify.log" if group.is_main else None,
    )
    say = monitor.say if group.is_main else (lambda *args, **kwargs: None)
    say(
        f"{len(table)} particles, {_boxes(table, frame)} -> working box {d_work} at "
        f"{work_psize:.3f} Å (Nyquist {2 * work_psize:.1f} Å), K = {k}"
        f"{'' if symmetry == 'C1' else f', symmetry {symmetry}'}, {device}"
    )
    if start.message:
        say(start.message)
    monitor.truth = truth = _truth(star, len(table), say)
    with closing(monitor):
        t0 = time.perf_counter()
        batcher = BatchMaker(
            images,
            d_work,
            device,
            pad=settings.model.pad,
            use_ctf_scale=settings.model.contrast != "none",
            cache_bytes=int(config.data.cache_gb * 2**30),
            kernels=config.kernels,
        )

        # The record is written with the first checkpoint, once the inputs are read and checked;
        # a resumed run's record stands.
        unrecorded = start.state is None or start.continued is not None

        def checkpoint(state: dict) -> None:
            nonlocal unrecorded
            if unrecorded:
                save_job_record(output_dir, config)
                if start.continued is not None:
                    record_continuation(output_dir, *start.continued)
                unrecorded = False
            # Before the checkpoint: a run resumed from it rewrites them as they were.
            write_iteration(output_dir, state, d_full, work_psize, config.outputs.iteration_maps)
            save_checkpoint(output_dir / CHECKPOINT_NAME, {**state, "inputs": inputs})

        result = classify(
            batcher, settings, monitor, initial_maps, checkpoint, resume_state, masks, *modules,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        if group.is_main:
            write_outputs(output_dir, table, result, monitor, d_full, config.outputs)
            monitor.write_report()
        return _summary(result, seconds, truth, k, device, output_dir, say)


def _read_table(config: RunConfig, star: Path, output_dir: Path) -> ParticleTable:
    """The particle table of ``star``, refused where the run cannot classify it."""
    if (output_dir / f"particles{star.suffix}").resolve() == star.resolve():
        raise InputError(
            star, None, f"output_dir {output_dir} would overwrite the input: choose another folder"
        )
    data = config.data
    table = read_particles(
        star, data_dir=data.data_dir, passthrough=data.passthrough, pixel_size=data.pixel_size
    )
    k = config.model.num_classes
    if k > len(table):
        raise InputError(
            star, None, f"model.num_classes = {k} is more than its {len(table)} particles"
        )
    return table


def _boxes(table: ParticleTable, frame: ReferenceFrame) -> str:
    """The particles' box and pixel size, for the run's first line: ``box 64 at 1.500 Å``;
    for optics groups of several, each distinct one with its groups, and the frame the run's
    maps take (``box 80 at 1.200 Å (optics group 1), box 64 at 1.500 Å (optics group 2);
    maps at box 80 at 1.200 Å (optics group 1)``)."""
    optics = table.optics
    assert optics.number is not None  # OpticsGroups sets it
    kinds: dict[tuple[int, float], list[int]] = {}
    for group in np.unique(table.optics_group):
        key = (int(optics.image_size[group]), round(float(optics.pixel_size_angstrom[group]), 4))
        kinds.setdefault(key, []).append(int(optics.number[group]))
    if len(kinds) == 1:
        return f"box {frame.box} at {frame.pixel_size_angstrom:.3f} Å"
    each = [
        f"box {box} at {psize:.3f} Å (optics group{'s' if len(numbers) > 1 else ''} "
        f"{', '.join(map(str, numbers))})"
        for (box, psize), numbers in kinds.items()
    ]
    return f"{', '.join(each)}; maps at {frame.describe()}"


def _summary(
    result: ClassificationResult,
    seconds: float,
    truth: np.ndarray | None,
    num_classes: int,
    device: torch.device,
    output_dir: Path,
    say: Callable[[str], None],
) -> dict:
    """The run's summary (printed): iterations, time, accuracy if known, peak GPU memory."""
    summary = {"seconds": seconds, "iterations": len(result.history)}
    if truth is not None:
        summary["accuracy"] = classification_accuracy(
            result.posteriors.argmax(1), truth, num_classes
        )
    if device.type == "cuda":  # this process's peak, what the benchmark reports
        summary["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    say(
        f"done: {summary['iterations']} iterations in {seconds:.1f} s; outputs in {output_dir}"
        + (
            f"; accuracy against the true classes {100 * summary['accuracy']:.2f} %"
            if "accuracy" in summary
            else ""
        )
        + (f"; peak GPU memory {summary['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in summary else "")
    )
    return summary


@hydra.main(config_path=CONFIG_PATH, config_name="classify", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run_reporting_input_errors("cryotorch-classify", run, cfg, resumable=True)


def main() -> None:
    try:  # continue_from=DIR: DIR's command line, then this one
        sys.argv[1:] = continue_arguments(sys.argv[1:])
    except InputError as exc:
        print(f"cryotorch-classify: error: {exc}", file=sys.stderr)
        sys.exit(2)
    check_command_line("cryotorch-classify", "classify", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
