"""A user's own regulariser or posterior layer, chosen from the configuration (``custom.*``)
and made by Hydra's ``instantiate``::

    cryotorch-classify 'custom.regulariser={_target_: mylab.priors.Smooth, strength: 2}'
    cryotorch-classify 'custom.similarity_layer={_target_: mylab.layers.Tempered}'

``custom.regulariser``: a :class:`~cryotorch.engine.regularisers.Regulariser` (in place of
``model.regulariser``'s). ``custom.similarity_layer``: an ``nn.Module`` called as
:class:`~cryotorch.engine.posterior.ClassSimilarity` is, ``layer(scores (b, K), beta) -> (b, K)``
probabilities (in place of class similarity; β still follows ``posterior.similarity``'s
schedule, force hard still comes after it). Each is made and tried before anything is
written; a class that cannot be imported or made, or a module of the wrong kind, is one line
naming the key.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from torch import nn

from cryotorch.engine.regularisers import Regulariser
from cryotorch.errors import InputError

__all__ = ["make_custom_modules"]


def make_custom_modules(
    custom: Any, num_classes: int
) -> tuple[Regulariser | None, nn.Module | None]:
    """The regulariser and the similarity layer ``custom`` (``RunConfig.custom``) asks for
    (None where it asks for none), made and checked: the layer must map log-scores of
    ``num_classes`` classes to probabilities."""
    regulariser = _make(custom.regulariser, "custom.regulariser")
    if regulariser is not None and not isinstance(regulariser, Regulariser):
        raise InputError(
            "configuration",
            "custom.regulariser",
            f"{type(regulariser).__qualname__} is not a cryotorch.Regulariser subclass",
        )
    layer = _make(custom.similarity_layer, "custom.similarity_layer")
    if layer is not None:
        _check_layer(layer, num_classes)
    return regulariser, layer


def _make(spec: Any, key: str) -> Any:
    """``instantiate(spec)`` (None for None), its failures as one line naming ``key``."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise InputError(
            "configuration", key, f"expected {{_target_: module.Class, ...arguments}}, got {spec!r}"
        )
    try:
        return instantiate(spec)
    except (HydraException, ImportError, TypeError, ValueError) as exc:
        cause = exc.__cause__ or exc  # Hydra wraps the error of the class's own call
        reason = " ".join(str(cause).split()) or type(cause).__name__
        if cause is not exc:
            reason = f"{type(cause).__name__}: {reason}"
        raise InputError("configuration", key, f"cannot make {spec['_target_']}: {reason}") from exc


def _check_layer(layer: Any, k: int) -> None:
    """One call on log-scores ``(4, k)`` at β = 0.5 must give finite probabilities."""
    key = "custom.similarity_layer"
    if not isinstance(layer, nn.Module):
        raise InputError(
            "configuration", key, f"{type(layer).__qualname__} is not a torch.nn.Module"
        )
    scores = torch.linspace(-3.0, 3.0, 4 * k, dtype=torch.float64).reshape(4, k)
    try:
        gamma = layer(scores, 0.5)
    except Exception as exc:  # the user's code: whatever it raises is the user's to fix
        raise InputError(
            "configuration", key, f"layer(scores (4, {k}), beta=0.5) raised {exc!r}"
        ) from exc
    ok = (
        isinstance(gamma, torch.Tensor)
        and gamma.shape == scores.shape
        and bool(torch.isfinite(gamma).all())
        and bool((gamma >= 0).all())
        and bool(torch.allclose(gamma.sum(1).double(), torch.ones(4, dtype=torch.float64)))
    )
    if not ok:
        got = repr(gamma).replace("\n", " ")[:120]
        raise InputError(
            "configuration",
            key,
            f"layer(scores (4, {k}), beta=0.5) must give (4, {k}) probabilities that sum to 1 "
            f"per row, got {got}",
        )
