"""Gradient training of the class maps: the pieces (the epochs run in
:mod:`cryotorch.engine.gradient_training`).

Instead of EM's closed-form M-step, the K maps (and the class proportions) are parameters,
trained with any ``torch.optim`` optimiser on mini-batches to maximise, per particle ``i``,

    F_i = Σ_k γ̃_ik (ℓ_ik + log π_k) - Σ_k γ̃_ik log γ̃_ik,        γ̃_i = layers(ℓ_i + log π),

minus the regulariser's penalty (a negative log prior, :meth:`Regulariser.penalty`) over N
(and, when the noise is trained, plus the Gaussian normaliser :func:`gaussian_normaliser`).
``layers`` are the posterior layers: class similarity β and the straight-through force-hard.
With β = 0 and no force-hard, γ̃ is the posterior and ``F_i = log Σ_k π_k exp ℓ_ik``, the
marginal log-likelihood (the objective of RELION's VDAM and cryoSPARC's SGD); with force-hard
it is the classification likelihood ``max_k (ℓ_ik + log π_k)``; with β = 1 every class gets
every particle equally (all maps are pulled to the consensus). F is EM's lower bound (the
free energy): EM maximises it over γ and the maps in turn, gradient training moves both at
once through autograd, E-step and layers included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ClassMaps",
    "GradientSettings",
    "free_energy",
    "gaussian_normaliser",
    "make_optimizer",
]


@dataclass
class GradientSettings:
    """``optim.gradient.*`` (``optim=gradient``: see ``configs/optim/gradient.yaml``)."""

    optimizer: str = "Adam"  # a torch.optim class
    learning_rate: float = 0.2  # in units of the initial maps' rms inside the mask
    epochs: int = 10
    batch_size: int = 256  # particles per optimiser step
    train_prior: bool = True  # class proportions trained too (else: mean posterior per epoch)
    train_noise: bool = False  # noise power per shell trained too (else: from the residuals)

    def __post_init__(self) -> None:
        optimizer_class(self.optimizer)  # checks the name
        for key in ("learning_rate", "epochs", "batch_size"):
            if not getattr(self, key) > 0:
                raise ValueError(f"optim.gradient.{key} must be > 0, got {getattr(self, key)}")


def free_energy(scores: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``(b,)``: ``Σ_k γ_k s_k - Σ_k γ_k log γ_k`` for log-scores ``s = ℓ + log π`` ``(b, k)``
    and class weights ``gamma (b, k)`` (rows summing to 1); ``logsumexp(s)`` at γ = softmax(s)."""
    # γ log γ with 0 at γ = 0 *and a zero gradient there*: the derivative log γ + 1 is -inf at
    # an exact 0 (an underflowed posterior, or force-hard's one-hot), and -inf · 0 is NaN.
    positive = gamma > 0
    safe = torch.where(positive, gamma, torch.ones_like(gamma))
    entropy_terms = torch.where(positive, gamma * torch.log(safe), torch.zeros_like(gamma))
    return (gamma * scores).sum(1) - entropy_terms.sum(1)


class ClassMaps(nn.Module):
    """The trained parameters: K maps ``(k, d, d, d)``, the class log-proportions and, if
    ``noise_power (g, n_shells)`` is given, the log noise power per optics group and shell.

    The maps are ``rms · θ · mask`` with θ the parameter, so that the learning rate is relative
    to the maps' greyscale whatever the data's normalisation.
    """

    rms: torch.Tensor  # buffers (register_buffer), which mypy cannot see
    mask: torch.Tensor
    log_noise: nn.Parameter | None

    def __init__(
        self,
        maps: torch.Tensor,
        prior: torch.Tensor,
        mask: torch.Tensor,
        train_prior: bool,
        noise_power: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        inside = mask > 0.5
        rms = maps[:, inside].pow(2).mean().sqrt() if bool(inside.any()) else maps.pow(2).mean()
        self.register_buffer("rms", rms.clamp_min(torch.finfo(maps.dtype).tiny).detach())
        self.register_buffer("mask", mask)
        self.theta = nn.Parameter(maps.detach() / self.rms)
        self.logits = nn.Parameter(torch.log(prior.detach()), requires_grad=train_prior)
        self.log_noise = None
        if noise_power is not None:
            self.log_noise = nn.Parameter(torch.log(noise_power.detach()))

    def maps(self) -> torch.Tensor:
        """``(k, d, d, d)`` in the particles' greyscale, solvent-masked."""
        return self.theta * self.rms * self.mask

    def log_prior(self) -> torch.Tensor:
        """``(k,)`` log class proportions (normalised)."""
        return torch.log_softmax(self.logits, dim=0)

    def noise_power(self) -> torch.Tensor:
        """``(g, n_shells)`` the trained noise power (only with ``noise_power`` given)."""
        assert self.log_noise is not None  # set when noise_power was given
        return torch.exp(self.log_noise)

    @torch.no_grad()
    def set_maps(self, maps: torch.Tensor) -> None:
        """Replace the maps (after a filter such as a denoiser), keeping the optimiser's state."""
        self.theta.copy_(maps / self.rms)


def gaussian_normaliser(
    noise_power: torch.Tensor, counts: torch.Tensor, optics_group: torch.Tensor, max_shell: int
) -> torch.Tensor:
    """``(b,)``: ``-½ Σ_{s=1..max_shell} n_s log power[g_i, s]``, the part of the Gaussian
    log-likelihood that the E-step leaves out (the same for every class) and that training the
    noise needs: without it a larger noise power always scores better. ``counts (n_shells,)``
    are the full-spectrum pixels per shell (:meth:`NoiseModel.pixels_per_shell`), or
    ``(b, n_shells)`` each image's independent ones (``ParticleBatch.shell_counts``)."""
    use = torch.zeros(counts.shape[-1], dtype=counts.dtype, device=counts.device)
    use[1 : max_shell + 1] = 1
    return -0.5 * (torch.log(noise_power[optics_group]) * (counts * use)).sum(1)


def optimizer_class(name: str) -> Callable[..., torch.optim.Optimizer]:
    """``torch.optim.<name>``, with a plain error for a wrong name (a subclass of
    ``torch.optim.Optimizer``, whose own arguments, ``lr`` and others, the base lacks)."""
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"optim.gradient.optimizer: torch.optim has no optimiser {name!r}")
    return cls


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], learning_rate: float
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=learning_rate)``, with a plain error for a wrong name."""
    return optimizer_class(name)(params, lr=learning_rate)
