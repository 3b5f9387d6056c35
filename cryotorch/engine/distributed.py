"""Data parallelism over processes with torch.distributed (started by ``torchrun``).

Every process (rank) holds the whole model (K maps, priors, noise) and reads only its share of
the particles: rows ``rank, rank + size, ...`` of each list of rows. What a pass adds up (the
sufficient statistics, noise sums, the posteriors of its rows) is summed over the ranks with
``all_reduce``, so every rank then takes the same M-step. Random choices come from the same
seeded generator on every rank and so agree without communication. gloo on CPU, NCCL on CUDA;
no cluster layer of our own.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "init_from_environment"]


def init_from_environment(device_type: str) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE > 1`` in the environment);
    False when run as a single process. NCCL for CUDA, gloo for CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


class ProcessGroup:
    """This process's place among the ranks (rank 0 of 1 without torch.distributed)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if active else 0
        self.size = dist.get_world_size() if active else 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, logs and writes files."""
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows``."""
        return rows[self.rank :: self.size]

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.size > 1:
            for t in tensors:
                dist.all_reduce(t)

    def sum_array_(self, array: np.ndarray) -> None:
        """Sum a numpy array over the ranks, in place (through the device for NCCL)."""
        if self.size > 1:
            t = torch.from_numpy(array).to(self.device)
            dist.all_reduce(t)
            array[...] = t.cpu().numpy()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.size > 1:
            dist.barrier()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t.item())
