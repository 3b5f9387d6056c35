"""``cryotorch-classify``: 3D classification without alignment (Hydra-configured).

    cryotorch-classify                                   # built-in simulated demo, prints accuracy
    cryotorch-classify data.particles=P.star model.num_classes=3 output_dir=run1
    cryotorch-classify experiment=hard_after_anneal
    cryotorch-classify -m model.num_classes=2,3,4

See ``configs/classify.yaml`` and its groups for every option.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cryotorch.cli.configs import (
    CONFIG_PATH,
    job_output_dir,
    load_config,
    run_reporting_input_errors,
)
from cryotorch.cli.outputs import write_outputs
from cryotorch.engine.batches import BatchMaker
from cryotorch.engine.classify import classify
from cryotorch.engine.distributed import ProcessGroup, init_from_environment
from cryotorch.engine.gradient import GradientSettings
from cryotorch.engine.posterior import ClassSimilarity, effective_sample_size
from cryotorch.engine.regularisers import make_regulariser
from cryotorch.engine.schedules import HardSchedule, SimilaritySchedule
from cryotorch.engine.settings import ClassificationSettings, Masks
from cryotorch.engine.state import CHECKPOINT_FORMAT, check_resumable
from cryotorch.errors import InputError, warn_input
from cryotorch.evaluation import TRUE_CLASSES, classification_accuracy, read_true_classes
from cryotorch.io import ParticleImages, read_map, read_particles
from cryotorch.io.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from cryotorch.io.mrc import PIXEL_SIZE_RTOL, UNSET_PIXEL_SIZES
from cryotorch.monitor import RunMonitor
from cryotorch.physics.fourier import cropped_box_for_resolution, fourier_crop_3d
from cryotorch.physics.masks import mask_from_map
from cryotorch.physics.slices import Kernels, as_kernels

__all__ = ["main", "run", "settings_from_config"]


def settings_from_config(cfg: DictConfig) -> ClassificationSettings:
    """The engine's settings from the composed configuration."""
    m, p, o = cfg.model, cfg.posterior, cfg.optim
    return ClassificationSettings(
        num_classes=int(m.num_classes),
        seed=int(cfg.seed),
        target_resolution=float(m.target_resolution),
        initial_resolution=float(m.initial_resolution),
        resolution_reach_at=int(m.resolution_reach_at),
        particle_diameter=None if m.particle_diameter is None else float(m.particle_diameter),
        solvent_edge=float(cfg.mask.soft_edge_angstrom),
        tau2_fudge=float(m.tau2_fudge),
        regulariser=str(m.regulariser),
        contrast=str(m.contrast),
        init=str(m.init),
        pca_subsets=int(m.pca_subsets),
        pad=int(m.pad),
        similarity=SimilaritySchedule(
            float(p.similarity.start),
            int(p.similarity.anneal_start),
            int(p.similarity.anneal_end),
            bool(p.similarity.auto_tune),
            float(p.similarity.target_ess_fraction),
        ),
        similarity_form=str(p.similarity.form),
        hard=HardSchedule(str(p.hard), int(p.hard_iterations)),
        online_epochs=float(o.online_epochs),
        batch_per_class=int(o.batch_per_class),
        learning_rate=float(o.learning_rate),
        half_life_percent=float(o.half_life_percent),
        max_iterations=int(o.max_iterations),
        convergence_percent=float(o.convergence_percent),
        batch_size=int(o.batch_size),
        prefetch=cfg.device == "cuda" if o.prefetch is None else bool(o.prefetch),
        empty_class_fraction=float(m.empty_class_fraction),
        duplicate_correlation=float(m.duplicate_correlation),
        reseed=int(m.reseed),
        progress=not bool(cfg.logger.quiet),
        method=str(o.method),
        gradient=GradientSettings(**o.gradient) if "gradient" in o else GradientSettings(),
    )


def _particles(cfg: DictConfig, output_dir: Path, simulate: bool = True) -> Path:
    """The particle file to classify: the user's, or the built-in simulation (made now unless
    ``simulate`` is false: then rank 0 has made it)."""
    if cfg.data.particles is not None:
        return Path(cfg.data.particles)
    simulated = output_dir / "simulated" / "particles.star"
    if not simulate or (simulated.is_file() and bool(cfg.resume)):
        return simulated  # simulated by rank 0, or by the run resumed
    from cryotorch.cli.simulate import run as run_simulation

    sim = cfg.data.simulate
    sim_cfg = load_config("simulate")
    sim_cfg.pop("hydra")
    sim_cfg = OmegaConf.merge(sim_cfg, dict(sim), {"seed": cfg.seed})
    return run_simulation(sim_cfg, output_dir / "simulated")


def _read_matching_map(path: str, images: ParticleImages) -> np.ndarray:
    """A map that must have the particles' box and pixel size (an InputError otherwise)."""
    ref, voxel = read_map(path)
    d = images.image_shape[-1]
    psize = float(images.table.pixel_size_angstrom[0])
    if ref.shape != (d, d, d):
        raise InputError(path, "header.nx/ny/nz", f"map is {ref.shape}, the particles are {d}x{d}")
    if abs(voxel - psize) > PIXEL_SIZE_RTOL * psize:
        if voxel not in UNSET_PIXEL_SIZES:
            raise InputError(
                path, "header.voxel_size", f"{voxel:.4f} Å, the particles have {psize:.4f} Å"
            )
        if voxel:
            warn_input(
                path,
                "header.voxel_size",
                f"1.0 Å, the usual value for 'not set'; taken as the particles' {psize:.4f} Å",
            )
    return ref


def _crop(volume: np.ndarray, d_work: int) -> torch.Tensor:
    return fourier_crop_3d(torch.as_tensor(volume).double(), d_work).float()


def _masks(cfg: DictConfig, images: ParticleImages, d_work: int, work_psize: float) -> Masks:
    """The solvent and focus masks and the consensus map, at the working box."""
    mc = cfg.mask
    reference = None
    if cfg.data.reference is not None:
        reference = _crop(_read_matching_map(cfg.data.reference, images), d_work)
    solvent = None
    if mc.solvent == "from_reference":
        if reference is None:
            raise InputError(
                "configuration", "mask.solvent", "from_reference needs data.reference (a map)"
            )
        solvent = mask_from_map(
            reference,
            work_psize,
            float(mc.threshold),
            float(mc.extend_angstrom),
            float(mc.soft_edge_angstrom),
            float(mc.lowpass_angstrom),
        )
    elif mc.solvent != "sphere":
        solvent = _read_mask(mc.solvent, images, d_work)
    focus = None if mc.focus is None else _read_mask(mc.focus, images, d_work)
    return Masks(solvent=solvent, focus=focus, consensus=reference)


def _read_mask(path: str, images: ParticleImages, d_work: int) -> torch.Tensor:
    volume = _read_matching_map(path, images)
    if volume.min() < -0.01 or volume.max() > 1.01 or volume.max() <= 0:
        raise InputError(
            path,
            "data",
            f"a mask holds values in [0, 1]; this one spans {volume.min():.3g}..{volume.max():.3g}",
        )
    return _crop(volume, d_work).clamp(0, 1)


def _inputs_dict(cfg: DictConfig) -> dict:
    """The files and mask settings a run depends on beyond the engine's settings (a resumed
    run must use the same)."""
    return {
        "particles": str(cfg.data.particles),
        "reference": str(cfg.data.reference),
        "initial_maps": str(cfg.data.initial_maps),
        "mask": {k: str(v) for k, v in OmegaConf.to_container(cfg.mask).items()},
    }


def _initial_maps(cfg: DictConfig, images: ParticleImages, d_work: int) -> torch.Tensor | None:
    """``data.initial_maps`` (one .mrc per class) read, checked and cropped to the working box."""
    paths = cfg.data.initial_maps
    if paths is None:
        return None
    if isinstance(paths, str):
        paths = [paths]
    if len(paths) != int(cfg.model.num_classes):
        raise InputError(
            "configuration",
            "data.initial_maps",
            f"{len(paths)} maps given for model.num_classes = {cfg.model.num_classes}",
        )
    maps = []
    for path in paths:
        volume = _read_matching_map(path, images)
        if not volume.any():
            raise InputError(path, "data", "the map is all zeros")
        maps.append(volume)
    return _crop(np.stack(maps), d_work)


# Files that show a folder holds (part of) a classification run.
RUN_FILES = (CHECKPOINT_NAME, "iterations.csv", "posteriors.npy", "particles.star", "simulated")


def _prepare_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start afresh). Refuses a folder holding another
    run unless ``resume``; removes temporary files a killed run left."""
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not resume:
        raise InputError(
            output_dir,
            None,
            f"holds another run ({', '.join(found)}): choose another output_dir, "
            "or add resume=true to continue it",
        )
    for stale in output_dir.glob(".*.tmp*"):  # atomic writes cut short by a kill
        stale.unlink()
    checkpoint = output_dir / CHECKPOINT_NAME
    if resume and not checkpoint.is_file():
        print(f"resume=true: no {CHECKPOINT_NAME} in {output_dir}, starting from the beginning")
    return checkpoint if resume and checkpoint.is_file() else None


def _truth(star: str | Path, n: int, say=print) -> np.ndarray | None:
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
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("config", "device", "cuda was asked for, but torch sees no CUDA device")
    if init_from_environment(device.type):
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        try:
            return _run(cfg, device)
        finally:
            torch.distributed.destroy_process_group()
    return _run(cfg, device)


def _kernels(cfg: DictConfig) -> Kernels:
    """The slice kernels ``cfg.kernels`` (an InputError for an unknown name)."""
    try:
        return as_kernels(str(cfg.kernels))
    except ValueError as exc:
        raise InputError("config", "kernels", str(exc)) from exc


def _run(cfg: DictConfig, device: torch.device) -> dict:
    kernels = _kernels(cfg)
    group = ProcessGroup(device)
    say = print if group.is_main else (lambda *args, **kwargs: None)
    output_dir = job_output_dir(cfg)
    resume_from = _prepare_output_dir(output_dir, bool(cfg.resume))
    group.barrier()  # every rank has checked the folder before rank 0 writes to it
    try:
        settings = settings_from_config(cfg)
        ClassSimilarity(settings.similarity_form)  # checks the form's name
        make_regulariser(settings.regulariser)  # and the regulariser's
    except ValueError as exc:
        raise InputError("configuration", None, str(exc)) from exc
    if not isinstance(cfg.data.cache_gb, int | float) or not cfg.data.cache_gb >= 0:
        raise InputError("configuration", "data.cache_gb", f"must be >= 0, not {cfg.data.cache_gb}")
    torch.manual_seed(settings.seed)
    star = _particles(cfg, output_dir) if group.is_main else None
    group.barrier()  # rank 0 has simulated the demo data, if asked to
    star = star or _particles(cfg, output_dir, simulate=False)
    if (output_dir / f"particles{Path(star).suffix}").resolve() == Path(star).resolve():
        raise InputError(
            star, None, f"output_dir {output_dir} would overwrite the input: choose another folder"
        )
    table = read_particles(
        star,
        data_dir=cfg.data.data_dir,
        passthrough=cfg.data.passthrough,
        pixel_size=cfg.data.pixel_size,
    )
    if settings.num_classes > len(table):
        raise InputError(
            star,
            None,
            f"model.num_classes = {settings.num_classes} is more than its {len(table)} particles",
        )
    resume_state = None if resume_from is None else load_checkpoint(resume_from, CHECKPOINT_FORMAT)
    # Everything the run reads is checked before anything is written.
    check = not bool(cfg.data.ignore_stack_pixel_size)
    with ParticleImages(table, check_pixel_size=check) as images:
        table = images.table  # with the box of every optics group, from the stacks if need be
        if len(set(table.pixel_size_angstrom.round(4))) > 1:
            raise InputError(
                star,
                "rlnImagePixelSize",
                "optics groups with different pixel sizes are not supported yet",
            )
        d_full, psize = images.image_shape[-1], float(table.pixel_size_angstrom[0])
        d_work, work_psize = cropped_box_for_resolution(d_full, psize, settings.target_resolution)
        masks = _masks(cfg, images, d_work, work_psize)
        initial_maps = _initial_maps(cfg, images, d_work)
        inputs = _inputs_dict(cfg)
        if resume_state is not None:
            check_resumable(resume_from, resume_state, settings, len(table), d_work, inputs)
        say(
            f"{len(table)} particles, box {d_full} at {psize:.3f} Å -> working box {d_work} at "
            f"{work_psize:.3f} Å (Nyquist {2 * work_psize:.1f} Å), "
            f"K = {settings.num_classes}, {device}"
        )
        if resume_state is not None:
            say(f"resuming {resume_from} after iteration {resume_state['iteration'] - 1}")
        truth = _truth(star, len(table), say)
        monitor = RunMonitor(
            output_dir,
            tensorboard=bool(cfg.logger.tensorboard) and group.is_main,
            quiet=bool(cfg.logger.quiet) or not group.is_main,
            first_step=0 if resume_state is None else int(resume_state["iteration"]),
            truth=truth,
            num_classes=settings.num_classes,
        )
        try:
            t0 = time.perf_counter()
            result = classify(
                BatchMaker(
                    images,
                    d_work,
                    device,
                    pad=settings.pad,
                    use_ctf_scale=settings.contrast != "none",
                    cache_bytes=int(float(cfg.data.cache_gb) * 2**30),
                    kernels=kernels,
                ),
                settings,
                monitor,
                initial_maps,
                checkpoint=lambda state: save_checkpoint(
                    output_dir / CHECKPOINT_NAME, {**state, "inputs": inputs}
                ),
                resume=resume_state,
                masks=masks,
            )
            seconds = time.perf_counter() - t0
            if group.is_main:
                write_outputs(output_dir, table, result, monitor)
                monitor.log_ess(
                    torch.as_tensor(effective_sample_size(result.posteriors.astype(np.float64))),
                    len(result.history),
                )
        finally:
            monitor.close()
    summary = {"seconds": seconds, "iterations": len(result.history)}
    if truth is not None:
        summary["accuracy"] = classification_accuracy(
            result.posteriors.argmax(1), truth, settings.num_classes
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
    run_reporting_input_errors("cryotorch-classify", run, cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
