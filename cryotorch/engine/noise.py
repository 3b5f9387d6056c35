"""The noise model: a power per resolution shell and optics group.

``power[g, s]`` is ``E|N_j|²`` for a Fourier pixel ``j`` of shell ``s`` of an image of optics
group ``g`` (rfft_2d units of the working box). The Gaussian log-likelihood of an image is then
``-½ Σ_j m_j |X_j - c_j A_j|² / power[g, s(j)]`` over the half spectrum, ``m_j`` the Hermitian
multiplicity (2, or 1 on the ``kx = 0`` and Nyquist columns): the real-space white-noise
Gaussian, written in Fourier space.
"""

from __future__ import annotations

import torch

from cryotorch.physics.shells import hermitian_weights, shell_index_2d

__all__ = ["NoiseModel"]


class NoiseModel:
    """Per optics group, per shell noise power of box-``d`` spectra.

    Parameters
    ----------
    power
        ``(g, d // 2 + 1)`` noise power per shell (shells past Nyquist are not used).
    """

    def __init__(self, power: torch.Tensor) -> None:
        self.power = power
        d = 2 * (power.shape[1] - 1)
        self.d = d
        self.shells = shell_index_2d(d, power.device).clamp_max(d // 2)  # (d, d//2+1)
        self.multiplicity = hermitian_weights(d, power.device).to(power.dtype)  # (d//2+1,)
        self._shell_matrices: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    @property
    def n_shells(self) -> int:
        return self.power.shape[1]

    def pixel_weights(self, optics_group: torch.Tensor, max_shell: int) -> torch.Tensor:
        """``(b, d, d // 2 + 1)``: ``m_j / power[g, s(j)]`` for shells 1..max_shell, 0 elsewhere."""
        inv = 1.0 / self.power.clamp_min(torch.finfo(self.power.dtype).tiny)
        use = (self.shells >= 1) & (self.shells <= max_shell)
        return inv[optics_group][:, self.shells] * (self.multiplicity * use)

    def shell_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``(..., n_shells)``: per-shell sums of ``values (..., c, c // 2 + 1)`` × multiplicity,
        over the whole box (``c = d``) or its centred crop of box ``c < d`` (the E-step's
        current box: the crop's entries counted as in the whole box). A product with the
        ``(c (c // 2 + 1), n_shells)`` shell-membership matrix: BLAS is much faster than an
        index_add along the last axis."""
        box = values.shape[-2]
        key = (box, values.dtype)
        if key not in self._shell_matrices:
            shells = self.shells
            multiplicity = self.multiplicity.expand_as(shells)
            if box < self.d:
                start = self.d // 2 - box // 2
                shells = shells[start : start + box, : box // 2 + 1]
                multiplicity = multiplicity[start : start + box, : box // 2 + 1]
            one_hot = torch.nn.functional.one_hot(shells.flatten(), self.n_shells)
            self._shell_matrices[key] = (one_hot * multiplicity.flatten()[:, None]).to(values.dtype)
        return values.flatten(-2) @ self._shell_matrices[key]

    def pixels_per_shell(self) -> torch.Tensor:
        """``(n_shells,)``: how many full-spectrum pixels each shell has."""
        return self.shell_sums(
            torch.ones(self.d, self.d // 2 + 1, dtype=self.power.dtype, device=self.power.device)
        )

    def sums_by_group(
        self,
        shell_values: torch.Tensor,
        optics_group: torch.Tensor,
        pixel_counts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per optics group, float64 ``(g, n_shells)``: the sums of ``shell_values (b, n_shells)``
        (e.g. :meth:`shell_sums` of a power) and of the pixels they cover, for
        :meth:`from_power_sums`. ``pixel_counts (b, n_shells)``: the independent pixels each
        image has in each shell (:attr:`ParticleBatch.shell_counts
        <cryotorch.engine.batches.ParticleBatch>`: an optics group resampled from a coarser
        pixel or a smaller extent); None: all of the shell's pixels."""
        g, n_shells = self.power.shape
        sums = torch.zeros(g, n_shells, dtype=torch.float64, device=self.power.device)
        sums.index_add_(0, optics_group, shell_values.double())
        per_image = (
            self.pixels_per_shell().double().expand(len(shell_values), -1)
            if pixel_counts is None
            else pixel_counts.double()
        )
        counts = torch.zeros_like(sums).index_add_(0, optics_group, per_image)
        return sums, counts

    @classmethod
    def from_power_sums(
        cls,
        sums: torch.Tensor,
        counts: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        previous: NoiseModel | None = None,
    ) -> NoiseModel:
        """From ``(g, n_shells)`` sums of ``|residual|²`` and their pixel counts, in ``dtype``
        (shells with no pixels or no power take the value of the nearest shell below; never
        exactly 0).

        An optics group the sums say nothing about keeps its power in ``previous``: one with
        no pixels (none of its particles in the sums: a mini-batch of online EM, a sample of
        the images), or no power past the DC term (its images blank: all zero, or constant).
        Without ``previous`` it takes the power of the other groups pooled. (A power of 0,
        1 / σ² of 10³⁸, made every score of its particles -inf.)"""
        power = _filled(sums, counts)
        unseen = (counts.sum(1) == 0) | (sums[:, 1:].sum(1) == 0)  # (g,)
        if bool(unseen.any()):
            if previous is not None:
                fallback = previous.power.to(power)
            else:
                seen = ~unseen
                fallback = _filled(
                    sums[seen].sum(0, keepdim=True), counts[seen].sum(0, keepdim=True)
                )
            power = torch.where(unseen[:, None], fallback, power)
        return cls(power.to(dtype).clamp_min(torch.finfo(dtype).tiny))

    def blank(self) -> bool:
        """Whether no group has any power past the DC term (every image blank)."""
        return not bool((self.power[:, 1:] > torch.finfo(self.power.dtype).tiny).any())

    @classmethod
    def from_images(
        cls, spectra: torch.Tensor, optics_group: torch.Tensor, n_groups: int
    ) -> NoiseModel:
        """The starting estimate: the power per shell of images ``spectra (b, d, d // 2 + 1)``
        of optics groups ``optics_group (b,)`` (signal included: fine at cryo-EM SNRs)."""
        probe = cls.flat(n_groups, spectra.shape[-2], spectra.real.dtype, spectra.device)
        power = probe.shell_sums(spectra.real**2 + spectra.imag**2)  # (b, n_shells)
        return cls.from_power_sums(*probe.sums_by_group(power, optics_group), spectra.real.dtype)

    @classmethod
    def flat(
        cls, n_groups: int, d: int, dtype: torch.dtype, device: torch.device | str
    ) -> NoiseModel:
        """Power 1 in every shell: a probe for :meth:`shell_sums` and :meth:`sums_by_group`."""
        return cls(torch.ones(n_groups, d // 2 + 1, dtype=dtype, device=device))


def _filled(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``sums / counts`` per group and shell ``(g, n_shells)``; a shell with no pixels, or no
    power at all, takes the value of the shell below. (No power: past the shells an E-step
    scores its residual is the image's power, which a blank image has none of; as a noise
    power, 0 would give 1 / σ² of 10³⁸ and -inf scores once those shells are scored.)"""
    power = sums / counts.clamp_min(1)
    for s in range(1, power.shape[1]):
        known = (counts[:, s] > 0) & (sums[:, s] > 0)
        power[:, s] = torch.where(known, power[:, s], power[:, s - 1])
    return power
