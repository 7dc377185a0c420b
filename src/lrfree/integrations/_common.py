"""What every integration shares: the scalars worth logging, and the loss of an optimizer
step for the methods that need it (PS-SPS, SPS) when a framework calls ``step()`` without it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

#: scalars of the global estimate, logged once (every group holds the same values)
ESTIMATE_KEYS = ("d", "d_hat", "polyak_step", "dog_step")


def missing(framework: str, packages: str) -> ImportError:
    """The ImportError an integration raises when its framework is not installed."""
    return ImportError(
        f"lrfree.integrations.{framework} needs {packages}: "
        "pip install 'lrfree[integrations]' (the versions we test)")


def learning_rate_scalars(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of each param group and the optimizer's estimate, as floats.

    Keys: ``effective_lr`` (one group) or ``effective_lr/group{i}`` (several): the lr
    ``torch.optim.Adam`` would need for the step just taken (SGD's for ``SPS`` and
    ``DAdaptSGD``); for an optimizer that does not estimate one it is the group's ``lr``.
    Then whichever of ``d``, ``d_hat``, ``polyak_step``, ``dog_step`` the optimizer exposes,
    and ``skipped_steps`` once a step was skipped. Reading the values waits for the device.
    """
    groups = optimizer.param_groups
    scalars: dict[str, float] = {}
    for i, group in enumerate(groups):
        key = "effective_lr" if len(groups) == 1 else f"effective_lr/group{i}"
        scalars[key] = float(group.get("effective_lr", group["lr"]))
    for key in (*ESTIMATE_KEYS, "skipped_steps"):
        if key in groups[0]:
            scalars[key] = float(groups[0][key])
    return scalars


def _steps_through_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` runs torch's step hooks: the class's step, directly or
    through an LR scheduler's wrapper (which records the call and calls it)."""
    step = vars(optimizer).get("step")
    if step is None:
        return True
    inner = getattr(step, "__func__", None) or getattr(step, "__wrapped__", None)
    return inner is type(optimizer).step


class LossFeed:
    """The loss whose gradient an optimizer is about to use, handed to its ``step()``.

    Frameworks back-propagate ``loss / n`` for each of ``n`` accumulated micro-batches and
    then call ``optimizer.step()`` with no loss (Hugging Face) or with a closure that returns
    only the last micro-batch's share (Lightning). :meth:`add` each back-propagated loss,
    :meth:`reset` when the gradients are zeroed; :meth:`attach` registers a torch step
    pre-hook that gives the sum to ``step``: as ``loss=`` when the call has neither loss nor
    closure, or as the closure's return value (the closure still runs first).

    An explicit ``step(loss=...)`` is left alone. The hook goes through torch's
    ``register_step_pre_hook``, which an optimizer wrapped by ``lrfree.fused`` bypasses, so
    :meth:`attach` refuses one.
    """

    def __init__(self) -> None:
        self._total: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor | None:
        """The sum of the losses added since the last reset (detached), or None."""
        return self._total

    def reset(self) -> None:
        self._total = None

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self._total = loss if self._total is None else self._total + loss

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        if not _steps_through_hooks(optimizer):
            raise ValueError(
                f"{type(optimizer).__name__}.step was replaced on the instance (lrfree.fused "
                "does this), which bypasses torch's step hooks, so the loss cannot be handed "
                "to it: use the optimizer without lrfree.fused here")
        return optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if kwargs.get("loss") is not None:
            return None
        # args[0] is the optimizer itself; a closure is args[1] or kwargs["closure"]
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is None:
            if self._total is None:
                return None  # nothing recorded: the optimizer's own error says what is missing
            return args, {**kwargs, "loss": self._total}

        def closure_with_total() -> Any:
            returned = closure()
            # None: the framework skipped this batch (no backward): nothing to step on
            if returned is None or self._total is None:
                return returned
            return self._total

        return (args[0],), {**kwargs, "closure": closure_with_total}
