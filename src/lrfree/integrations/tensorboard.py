"""TensorBoard logging of the estimated learning rate.

    from torch.utils.tensorboard import SummaryWriter
    from lrfree.integrations.tensorboard import log_learning_rates

    writer = SummaryWriter("runs/psdasgd")
    for step in range(steps):
        ...
        opt.step()
        log_learning_rates(writer, opt, step)

Tags (under ``prefix``, default ``"lrfree/"``): ``effective_lr`` (``effective_lr/group{i}``
with several param groups), then whichever of ``d``, ``d_hat``, ``polyak_step``, ``dog_step``
the optimizer exposes, and ``skipped_steps`` once a step was skipped. Any torch optimizer
works: one without an estimate logs its ``lr`` as ``effective_lr``.
"""
from __future__ import annotations

from typing import Any

import torch

from lrfree.integrations._common import learning_rate_scalars, missing


def log_learning_rates(writer: Any, optimizer: torch.optim.Optimizer, step: int,
                       prefix: str = "lrfree/") -> dict[str, float]:
    """Write the learning rates and the estimate as scalars at ``step``; returns them.

    ``writer`` is anything with TensorBoard's ``add_scalar(tag, value, step)``
    (``torch.utils.tensorboard.SummaryWriter``, tensorboardX). Reading the values waits for
    the device, so call it every few steps on an accelerator rather than every step.
    """
    scalars = learning_rate_scalars(optimizer)
    for tag, value in scalars.items():
        writer.add_scalar(prefix + tag, value, step)
    return scalars


def summary_writer(log_dir: str, **kwargs: Any) -> Any:
    """``torch.utils.tensorboard.SummaryWriter(log_dir, **kwargs)``, with an ImportError
    that says what to install when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise missing("tensorboard", "the tensorboard package") from exc
    return SummaryWriter(log_dir, **kwargs)
