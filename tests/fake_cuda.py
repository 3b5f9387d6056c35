"""An emulated CUDA device for a machine without one: checks the CUDA path's device handling.

No GPU may be lent when the CUDA code changes, and a run on one is short and rare; a tensor left
on the CPU, or a ``.numpy()`` of a device tensor, would spend it on a crash. :func:`install`
makes torch report one CUDA device, so that the tests marked ``gpu`` and ``device=cuda`` runs go
through here with the device rules that CUDA enforces:

- a tensor "on cuda" is a CPU tensor of the subclass :class:`EmulatedCuda` (``.device`` is
  ``cuda:0``); factories given ``device="cuda"`` make one, ``.to``/``.cuda``/``.cpu`` copy
  between the two devices, and every op on one gives one;
- an op that mixes a cuda tensor with a CPU tensor (or numpy array) of one or more dimensions
  raises :class:`DeviceMixError`, as CUDA does (0-d CPU tensors are allowed, and so are CPU
  index tensors in ``x[index]``, as in CUDA); so does ``.numpy()`` (or ``np.asarray``) of a cuda
  tensor, and ``pin_memory`` of one;
- torch function modes are per thread: every thread started after :func:`install` runs under
  one too (the prefetching thread of the batches).

It checks neither numerics nor speed: CUDA kernels, torch.compile (Triton), NCCL and GPU memory
need a real GPU (``scripts/gpu_check.sh``). Use: ``CRYOTORCH_FAKE_CUDA=1 python -m pytest -m gpu``
(``tests/conftest.py`` installs it), or ``import tests.fake_cuda; tests.fake_cuda.install()``
first in a process. It cannot be uninstalled.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
MOVES = ("to", "cuda", "cpu")
INDEXING = ("__getitem__", "__setitem__", "copy_")


class DeviceMixError(RuntimeError):
    """What CUDA would have raised: tensors on two devices in one op, or numpy of a cuda tensor."""


class EmulatedCuda(torch.Tensor):
    """A CPU tensor standing for a tensor on the emulated CUDA device."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # the mode does it all


def on_cuda(t: object) -> bool:
    """Whether ``t`` is a tensor on the emulated device."""
    return isinstance(t, EmulatedCuda)


def _to_cuda(x: object) -> object:
    return x.as_subclass(EmulatedCuda) if isinstance(x, torch.Tensor) and not on_cuda(x) else x


def _to_cpu(x: object) -> object:
    return x.as_subclass(torch.Tensor) if isinstance(x, EmulatedCuda) else x


def _is_cuda_device(x: object) -> bool | None:
    """True/False for a device (or its name) of CUDA/another type; None for anything else."""
    if isinstance(x, torch.device):
        return x.type == "cuda"
    if isinstance(x, str):
        try:
            return torch.device(x).type == "cuda"
        except RuntimeError:
            return None
    return None


def _move_target(name: str, args: tuple, kwargs: dict) -> bool | None:
    """Whether ``.to``/``.cuda``/``.cpu`` moves to CUDA (True), the CPU (False) or stays (None)."""
    if name in ("cuda", "cpu"):
        return name == "cuda"
    target = None
    for a in (*args[1:], *kwargs.values()):
        if isinstance(a, torch.Tensor):
            target = on_cuda(a)
        elif _is_cuda_device(a) is not None:
            target = _is_cuda_device(a)
    return target


class EmulatedCudaMode(TorchFunctionMode):
    """Sees every torch call and applies CUDA's device rules (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        cuda_in = any(on_cuda(t) for t in tensors)
        name = getattr(func, "__name__", "")
        getter_of = getattr(func, "__self__", None)  # a property's __get__
        if getter_of is torch.Tensor.device:
            return CUDA if cuda_in else func(*args)
        if getter_of is torch.Tensor.is_cuda:
            return cuda_in
        if getter_of is torch.Tensor.grad and cuda_in:
            return _to_cuda(func(*args))
        if name in ("numpy", "__array__") and cuda_in:
            raise DeviceMixError(f"{name}() of a cuda tensor (move it with .cpu() first)")
        if name == "pin_memory":
            if cuda_in:
                raise DeviceMixError("pin_memory() of a cuda tensor")
            return args[0]  # a CPU-only torch cannot pin; the copy after it is what matters
        if name in MOVES:
            target = _move_target(name, args, kwargs)
            target = cuda_in if target is None else target
            kwargs = {
                k: ("cpu" if _is_cuda_device(v) is not None else v) for k, v in kwargs.items()
            }
            args = tuple("cpu" if _is_cuda_device(a) is not None else a for a in args)
            if name == "cuda":
                func, args, kwargs = torch.Tensor.cpu, args[:1], {}
        elif "device" in kwargs and _is_cuda_device(kwargs["device"]) is not None:
            target = bool(_is_cuda_device(kwargs["device"]))  # a factory
            kwargs["device"] = "cpu"
        else:
            in_place = name.endswith("_") and args and isinstance(args[0], torch.Tensor)
            target = on_cuda(args[0]) if in_place else cuda_in  # x.add_(y) stays where x is
            if cuda_in:
                _check_no_mix(name, args, leaves)
        out = func(*args, **kwargs)
        if name in MOVES and isinstance(out, torch.Tensor) and target != cuda_in:
            out = out.clone()  # a move between devices copies
        return tree_map(_to_cuda if target else _to_cpu, out)


def _check_no_mix(name: str, args: tuple, leaves: list) -> None:
    """Raise if an op on cuda tensors has a CPU tensor or array of one or more dimensions (CPU
    index tensors of ``x[index]`` excepted, as CUDA accepts them)."""
    if name in INDEXING:  # the values of x[i] = v must be on the device; the indices need not
        leaves = [args[2]] if name == "__setitem__" and len(args) > 2 else []
    for x in leaves:
        cpu_tensor = isinstance(x, torch.Tensor) and not on_cuda(x) and x.dim() > 0
        if cpu_tensor or (isinstance(x, np.ndarray) and x.ndim > 0):
            raise DeviceMixError(
                f"{name}: a cuda tensor with a CPU {type(x).__name__} of shape {tuple(x.shape)}"
            )


class _CpuGenerator(torch.Generator):
    """``torch.Generator(device="cuda")`` gives a CPU generator (its numbers are the CPU's)."""

    def __new__(cls, device: object = "cpu") -> _CpuGenerator:
        return super().__new__(cls, "cpu")

    def __init__(self, device: object = "cpu") -> None:
        pass


_installed = False


def install() -> None:
    """Make torch report one CUDA device, emulated on the CPU, in this process from now on."""
    global _installed
    if _installed:
        return
    _installed = True
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.reset_peak_memory_stats = lambda device=None: None
    cuda.max_memory_allocated = lambda device=None: 0  # not measured: reported as 0 MB
    cuda.memory_allocated = lambda device=None: 0
    torch.Generator = _CpuGenerator
    run = threading.Thread.run

    def run_under_the_mode(self: threading.Thread) -> None:
        with EmulatedCudaMode():
            run(self)

    threading.Thread.run = run_under_the_mode
    EmulatedCudaMode().__enter__()
