"""Build optimizers by name, and compose a PS optimizer from a scaling and a rule.

Any diagonal preconditioner is a parameter scaling, so any learning-rate-free rule for plain
gradient descent makes it learning-rate-free: ``lrfree.ps(params, rule="dog",
scaling="adagrad")`` is PS-DoG on AdaGrad's scaling. ``lrfree.create("ps-dadapt", params)``
builds a named preset.

=============  =====================  ==========================================
name           class                  what
=============  =====================  ==========================================
ps-dadapt      :class:`PSDASGD`       D-Adaptation in Adam's scaled space
ps-sps         :class:`PSSPS`         the Polyak step in Adam's scaled space
ps-dog         :class:`PSDoG`         DoG in Adam's scaled space
sps            :class:`SPS`           the Polyak step for SGD
dadapt-sgd     :class:`DAdaptSGD`     D-Adaptation SGD
=============  =====================  ==========================================

The names ``psdasgd``, ``pssps``, ``psdog`` are aliases.
"""
from __future__ import annotations

from typing import Any

import torch

from lrfree.optim import DAdaptSGD, PSDASGD, PSDoG, PSSPS, SPS
from lrfree.scaling import Scaling

RULES: dict[str, type[torch.optim.Optimizer]] = {"dadapt": PSDASGD, "sps": PSSPS, "dog": PSDoG}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "ps-dadapt": PSDASGD, "ps-sps": PSSPS, "ps-dog": PSDoG, "sps": SPS, "dadapt-sgd": DAdaptSGD,
}
ALIASES = {"psdasgd": "ps-dadapt", "pssps": "ps-sps", "psdog": "ps-dog", "dadaptsgd": "dadapt-sgd"}


def available() -> list[str]:
    """Every name :func:`create` accepts."""
    return [*OPTIMIZERS, *ALIASES]


def create(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (see :func:`available`) with ``kwargs``."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in OPTIMIZERS:
        raise ValueError(f"name={name!r} is not known; use one of {', '.join(available())}")
    return OPTIMIZERS[key](params, **kwargs)


def ps(params: Any, rule: str = "dadapt", scaling: str | Scaling = "adam",
       **kwargs: Any) -> torch.optim.Optimizer:
    """A parameter-scaled optimizer: ``rule`` ("dadapt", "sps", "dog") run in the space
    scaled by ``scaling`` ("adam", "amsgrad", "rmsprop", "adagrad", "adafactor", "none" or a
    Scaling)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not known; use one of {', '.join(RULES)}")
    return RULES[rule](params, scaling=scaling, **kwargs)
