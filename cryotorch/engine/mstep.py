"""The M-step: sufficient statistics of a batch, and the class maps, priors and noise from them.

Per class k and Fourier voxel l (padded grid, ``p = pad · d``):

    V_kl = Σ_i γ_ik [Pᵀ(c_i S_i* X_i / σ²)]_l
           / (Σ_i γ_ik [Pᵀ(c_i² / σ²)]_l + 1 / (pad³ T τ²_{k,s(l)}))

with τ²_{k,s} the power in shell s (``E|V|²``, the units of the slices) of
class k's unregularised reconstruction from the same statistics, and T the
``tau2_fudge``; the ``pad³`` accounts for the padded grid's finer sampling (as
RELION does). Then the gridding correction and the solvent mask. Class priors
π_k = mean_i γ_ik; noise power per shell and optics group = posterior-weighted
mean of ``|X - c A|²``. With a point group (``model.symmetry``), the data and weight sums are
first summed over its operators (:func:`~cryotorch.physics.symmetrise.symmetrise_sums`, as
RELION's backprojector does), so τ², the FSC filter and the maps all see symmetric sums.

The statistics are plain tensors that add up: batches, online-EM mixing and processes
through ``torch.distributed.all_reduce`` all work on :class:`SufficientStatistics` alone.
:class:`MStep` is the M-step as a module: statistics in, maps (through its regulariser, a
submodule), class priors and noise out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from cryotorch.engine.batches import ParticleBatch
from cryotorch.engine.estep import EStepResult
from cryotorch.engine.noise import NoiseModel
from cryotorch.physics.fourier import frequency_grid_3d, rfft_3d
from cryotorch.physics.projector import reconstruct_from_sums
from cryotorch.physics.shells import mean_per_shell_3d
from cryotorch.physics.slices import insert_for_reconstruction
from cryotorch.physics.symmetrise import symmetrise_sums
from cryotorch.physics.symmetry import canonical_symmetry, symmetry_operators

if TYPE_CHECKING:  # regularisers.py builds on this module's update_maps
    from cryotorch.engine.regularisers import Regulariser

__all__ = [
    "MStep",
    "MStepResult",
    "SufficientStatistics",
    "accumulate_statistics",
    "map_power_spectrum",
    "update_maps",
]


@dataclass
class SufficientStatistics:
    """Sums over particles: ``data (n_voxels, 2k)``, ``weight (n_voxels, k)``,
    ``class_weight (k,)``, ``noise_sum``/``noise_count`` ``(g, n_shells)``, ``n_particles ()``."""

    data: torch.Tensor
    weight: torch.Tensor
    class_weight: torch.Tensor
    noise_sum: torch.Tensor
    noise_count: torch.Tensor
    n_particles: torch.Tensor

    @classmethod
    def zeros(
        cls,
        k: int,
        d: int,
        pad: int,
        n_groups: int,
        device: torch.device | str,
        dtype: torch.dtype,
        with_maps: bool = True,
    ) -> SufficientStatistics:
        """Zero sums of ``k`` classes; ``with_maps=False``: no voxels (``data (0, 2k)``), for
        the class weights and noise alone (gradient training makes its maps otherwise)."""
        p = pad * d
        n_vox = p * p * (p // 2 + 1) if with_maps else 0
        n_shells = d // 2 + 1
        return cls(
            data=torch.zeros(n_vox, 2 * k, device=device, dtype=dtype),
            weight=torch.zeros(n_vox, k, device=device, dtype=dtype),
            class_weight=torch.zeros(k, device=device, dtype=torch.float64),
            noise_sum=torch.zeros(n_groups, n_shells, device=device, dtype=torch.float64),
            noise_count=torch.zeros(n_groups, n_shells, device=device, dtype=torch.float64),
            n_particles=torch.zeros((), device=device, dtype=torch.float64),
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def merged_halves(self, k: int) -> SufficientStatistics:
        """The K-class statistics of statistics kept per half-set (``2k`` channels: the K
        classes of half 1, then of half 2); themselves if they have ``k`` channels."""
        return self if self.weight.shape[1] == k else self._channels_summed_into(k)

    def half(self, h: int, k: int) -> SufficientStatistics:
        """Half-set ``h`` (0 or 1) of statistics kept per half-set."""
        return SufficientStatistics(
            data=self.data[:, 2 * k * h : 2 * k * (h + 1)],
            weight=self.weight[:, k * h : k * (h + 1)],
            class_weight=self.class_weight[k * h : k * (h + 1)],
            noise_sum=self.noise_sum,
            noise_count=self.noise_count,
            n_particles=self.n_particles,
        )

    def summed_over_classes(self) -> SufficientStatistics:
        """One class holding every particle (the consensus), from the sums of the K classes."""
        return self._channels_summed_into(1)

    def _channels_summed_into(self, groups: int) -> SufficientStatistics:
        """Channel ``c`` added into channel ``c % groups``: ``groups`` channels."""
        n_vox = self.weight.shape[0]
        return SufficientStatistics(
            data=self.data.view(n_vox, -1, 2 * groups).sum(1),
            weight=self.weight.view(n_vox, -1, groups).sum(1),
            class_weight=self.class_weight.view(-1, groups).sum(0),
            noise_sum=self.noise_sum,
            noise_count=self.noise_count,
            n_particles=self.n_particles,
        )

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def symmetrised(self, operators: torch.Tensor, d: int, pad: int) -> SufficientStatistics:
        """New statistics whose map sums are summed over the point group ``operators
        (n_ops, 3, 3)`` (:func:`~cryotorch.physics.symmetrise.symmetrise_sums`); the other
        sums are shared with these. Statistics without map sums are returned as they are."""
        if self.weight.shape[0] == 0:
            return self
        data, weight = symmetrise_sums(self.data, self.weight, d, pad, operators)
        return SufficientStatistics(
            data=data,
            weight=weight,
            class_weight=self.class_weight,
            noise_sum=self.noise_sum,
            noise_count=self.noise_count,
            n_particles=self.n_particles,
        )

    def scale_(self, factor: float) -> SufficientStatistics:
        for t in self.tensors():
            t.mul_(factor)
        return self

    def add_(self, other: SufficientStatistics, factor: float = 1.0) -> SufficientStatistics:
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.add_(theirs, alpha=factor)
        return self

    def clone(self) -> SufficientStatistics:
        return SufficientStatistics(*(t.clone() for t in self.tensors()))


def accumulate_statistics(
    stats: SufficientStatistics,
    batch: ParticleBatch,
    estep: EStepResult | None,
    gamma: torch.Tensor,
    noise: NoiseModel,
    halves: torch.Tensor | None = None,
    max_shell: int | None = None,
) -> None:
    """Add ``batch`` with posterior weights ``gamma (b, k)`` (after the layers) to ``stats``.

    ``max_shell``: insert only the frequencies of shells ``0 .. max_shell`` into the map sums
    (the maps are then those of the data to that shell: RELION's backprojection to its
    ``current_size``); None: all of them.

    ``estep``: the batch's E-step result, whose residuals go into the noise sums and whose
    contrast ``scale`` into the map sums; None for a given assignment (no residuals: the noise
    sums are left as they are). With ``halves (b,)`` (0 or 1, each particle's half-set),
    ``stats`` has ``2k`` channels and each particle goes to the K classes of its half (see
    :meth:`SufficientStatistics.half`). Statistics made ``with_maps=False`` get no map sums.
    """
    weights = gamma
    if halves is not None:
        in_second = halves.to(gamma.dtype)[:, None]
        weights = torch.cat([gamma * (1 - in_second), gamma * in_second], dim=1)
    stats.class_weight += weights.sum(0).double()
    stats.n_particles += len(batch.rows)
    if estep is not None:
        residual = (gamma[:, :, None] * estep.residual_shells).sum(1)  # (b, n_shells)
        sums, counts = noise.sums_by_group(residual, batch.optics_group, batch.shell_counts)
        stats.noise_sum += sums
        stats.noise_count += counts
    n_vox = stats.weight.shape[0]
    if n_vox == 0:
        return
    d = batch.spectra.shape[-2]
    inv_power = (
        noise.pixel_weights(batch.optics_group, d // 2) / noise.multiplicity
    )  # 1/σ², 0 at DC
    ctf_x = batch.ctf * batch.shift.conj() * batch.spectra * inv_power  # (b, d, dh)
    ctf2 = batch.ctf**2 * inv_power
    # Class k adds γ_ik c X / σ² and γ_ik c² / σ²: one image per particle, scaled per class.
    g = weights.to(batch.ctf.dtype)
    factors = (g, g)
    if estep is not None and estep.scale is not None:
        # Per-particle contrast s: s c X in the data, s² c² in the weight.
        scale = estep.scale.to(batch.ctf.dtype)
        if halves is not None:
            scale = torch.cat([scale, scale], dim=1)
        factors = (g * scale, g * scale**2)
    assert batch.geometry is not None  # BatchMaker.add_geometry has set it
    geometry = batch.geometry if max_shell is None else batch.geometry.within_shell(max_shell)
    insert_for_reconstruction(
        ctf_x[:, None], geometry, n_vox, ctf2[:, None], (stats.data, stats.weight), factors
    )


def map_power_spectrum(maps: torch.Tensor) -> torch.Tensor:
    """``(k, d // 2 + 1)``: mean ``|F|²`` per shell of the rfft_3d of maps ``(k, d, d, d)``, over
    the full spectrum (Hermitian-weighted, see :func:`mean_per_shell_3d`)."""
    return mean_per_shell_3d(rfft_3d(maps).abs() ** 2, hermitian=True)


def update_maps(
    stats: SufficientStatistics,
    d: int,
    pad: int,
    tau2_fudge: float,
    solvent_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Class maps ``(k, d, d, d)`` from ``stats``, regularised with ``1 / (pad³ T τ²)``.

    τ² is the power per shell of this M-step's own unregularised reconstruction (solvent
    masked). Taking it from the previous maps instead would lock in their low-pass: a shell
    where a map has no power gets an infinitely strong prior and never gains any.
    """
    first = reconstruct_from_sums(stats.data, stats.weight, d, pad)
    tau2 = map_power_spectrum(first * solvent_mask if solvent_mask is not None else first)
    p = pad * d
    shells = (
        (frequency_grid_3d(p, stats.data.device).norm(dim=-1) / pad)
        .round()
        .long()
        .clamp_max(d // 2)
    )
    tiny = torch.finfo(stats.weight.dtype).tiny
    inv_tau2 = 1.0 / (
        pad**3 * tau2_fudge * tau2.to(stats.weight.dtype).clamp_min(tiny)
    )  # (k, n_shells)
    regularisation = inv_tau2[:, shells]  # (k, p, p, p//2+1)
    maps = reconstruct_from_sums(stats.data, stats.weight, d, pad, regularisation=regularisation)
    return maps * solvent_mask if solvent_mask is not None else maps


class MStepResult(NamedTuple):
    """``maps (k, d, d, d)``, class ``prior (k,)``, ``noise``, and the regulariser's table
    ``columns`` (e.g. each class's FSC resolution)."""

    maps: torch.Tensor
    prior: torch.Tensor
    noise: NoiseModel
    columns: dict[str, float]


class MStep(nn.Module):
    """The M-step: :class:`SufficientStatistics` -> class maps, class priors and noise.

    The maps come from ``regulariser`` (a submodule, e.g.
    :class:`~cryotorch.engine.regularisers.TauSquaredPrior`) with the ``solvent_mask``
    ``(d, d, d)`` (a buffer), so ``.to(device)`` and ``state_dict()`` cover both. The priors
    are the statistics' class weights normalised, ``π_k = Σ_i γ_ik / Σ_ik γ_ik``; the noise the
    posterior-weighted residual power per shell and optics group, or ``noise`` unchanged where
    the statistics hold no residuals (a given assignment). With a point group ``symmetry``
    (RELION's names, ``model.symmetry``; ``C1``: none, and no work) the map sums are first
    summed over it (:meth:`symmetrised`). The module holds nothing of a run:
    online EM's running sums are part of the run's state
    (:class:`~cryotorch.engine.state.RunState`), which a checkpoint holds whole.
    """

    solvent_mask: torch.Tensor  # a buffer (register_buffer), which mypy cannot see

    def __init__(
        self,
        regulariser: Regulariser,
        solvent_mask: torch.Tensor,
        num_classes: int,
        pad: int,
        pixel_size: float,
        symmetry: str = "C1",
    ) -> None:
        super().__init__()
        self.regulariser = regulariser
        self.register_buffer("solvent_mask", solvent_mask)
        self.num_classes = num_classes
        self.pad = pad
        self.pixel_size = pixel_size
        self.symmetry = canonical_symmetry(symmetry)
        # Not a buffer: the module's state_dict stays that of C1 (the operators follow the
        # statistics' device and dtype where they are used).
        self.operators = symmetry_operators(self.symmetry)

    def symmetrised(self, stats: SufficientStatistics) -> SufficientStatistics:
        """``stats`` with their map sums summed over the point group; ``stats`` themselves
        (no copy, no work) for C1."""
        if self.symmetry == "C1":
            return stats
        d = self.solvent_mask.shape[-1]
        return stats.symmetrised(self.operators, d, self.pad)

    def forward(self, stats: SufficientStatistics, noise: NoiseModel) -> MStepResult:
        """Maps, priors, noise and table columns from ``stats`` (K or 2K channels, see
        :attr:`Regulariser.half_sets`); ``noise`` is the one the statistics were made with."""
        k, d = self.num_classes, self.solvent_mask.shape[-1]
        stats = self.symmetrised(stats)
        maps, columns = self.regulariser(stats, k, d, self.pad, self.solvent_mask, self.pixel_size)
        class_weight = stats.merged_halves(k).class_weight
        prior = (class_weight / class_weight.sum().clamp_min(1e-300)).to(maps.dtype)
        if stats.noise_count.sum() > 0:
            noise = NoiseModel.from_power_sums(
                stats.noise_sum, stats.noise_count, maps.dtype, previous=noise
            )
        return MStepResult(maps, prior, noise, columns)
