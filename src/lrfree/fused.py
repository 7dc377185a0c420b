"""A fused step: the optimizer's update compiled by ``torch.compile``.

Eager, the step is a sequence of multi-tensor kernels, each one pass over the state. Compiled,
Inductor merges those elementwise passes into a few loops over the elements, which is what
torch's own ``fused=True`` AdamW does by hand.

    opt = lrfree.fused(lrfree.PSDASGD(model.parameters()))
    ...
    opt.step()            # or opt.step(loss=loss) for the Polyak methods

The compiled region is the step without the non-finite check (``nonfinite="unchecked"``
semantics), so it holds no host synchronisation and no graph break. The check of the
optimizer's own policy (``"skip"`` or ``"raise"``) runs eagerly before it, as the step's one
host sync; construct the optimizer with ``nonfinite="unchecked"`` to have none at all (e.g.
when a ``GradScaler`` already checks). The first step, which creates the state, runs
eagerly too, so the compiled graph sees every state tensor as an input.

Notes: the first compiled step takes seconds to compile (once per set of parameter shapes).
A group's ``lr`` may change every step (schedulers): it is traced as a symbolic float, not
recompiled. Changing other options after the first step recompiles. Apply ``fused`` before
creating an LR scheduler (the scheduler then wraps the fused step; tested).

``kernel="cpp"`` (CPU, PSDASGD and PSSPS): instead of compiling, the step runs a
hand-written C++ loop (:mod:`lrfree.kernels`: PSDASGD one pass over the elements, PSSPS
two), built once with a C++ compiler and ninja (``pip install lrfree[kernels]``); steps it
does not support (other scalings and options, non-CPU or non-contiguous tensors, bf16, the
first step, sharding: see :mod:`lrfree.kernels`) run the eager step. No compilation wait.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from lrfree.optim._base import LRFreeOptimizer


def fused(optimizer: LRFreeOptimizer, *, kernel: str = "compile",
          **compile_options: Any) -> LRFreeOptimizer:
    """Replace ``optimizer.step`` by a fused step (in place) and return the optimizer.

    ``kernel="compile"`` (default): the step compiled by ``torch.compile``;
    ``compile_options`` go to it (default: ``fullgraph=True``, so a graph break is an error
    rather than a silent slowdown). ``kernel="cpp"``: the C++ CPU kernel of
    :mod:`lrfree.kernels`, built here (a RuntimeError naming the fix if it cannot be).
    """
    if not isinstance(optimizer, LRFreeOptimizer):
        raise TypeError(f"lrfree.fused expects an lrfree optimizer; got {type(optimizer).__name__}")
    if kernel not in ("compile", "cpp"):
        raise ValueError(f"kernel={kernel!r} is invalid: use 'compile' or 'cpp'")
    if kernel == "cpp":
        if compile_options:
            raise ValueError(f"kernel='cpp' takes no torch.compile options; got "
                             f"{', '.join(compile_options)}")
        return _cpp(optimizer)
    # the class's step, not an instance wrapper (an LR scheduler's cannot be traced)
    eager_step = type(optimizer).step.__get__(optimizer)
    policy = optimizer._nonfinite
    options = {"fullgraph": True, **compile_options}

    @torch.compile(**options)
    def compiled_update(loss: torch.Tensor | None) -> None:
        eager_step(loss=loss)

    def step(loss: Any) -> Any:
        returned = loss
        buckets = optimizer._gather()
        fresh = any("step" not in optimizer.state[k] for b in buckets for k in b.keys)
        if fresh or not buckets or (optimizer.needs_loss and loss is None):
            eager_step(loss=loss)  # creates the state, or raises the eager step's error
            return returned
        # a Python float would be a compile-time constant: the graph takes a tensor
        if loss is not None and not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss), device=optimizer._device(),
                                dtype=optimizer._scalar_dtype())
        if loss is not None:
            loss = loss.detach()
        if policy != "unchecked":
            check = None if loss is None else optimizer._loss_tensor(loss, optimizer._device())
            if not optimizer._finite(buckets, check):
                return returned
        optimizer._nonfinite = "unchecked"
        try:
            compiled_update(loss)
        finally:
            optimizer._nonfinite = policy
        return returned

    return _replace_step(optimizer, step)


def _replace_step(optimizer: LRFreeOptimizer, fused_step: Callable[[Any], Any]
                  ) -> LRFreeOptimizer:
    """Install ``optimizer.step(closure=None, *, loss=None)``: the closure (if any) is
    evaluated with grad enabled, then ``fused_step(loss)`` runs without grad. A bound
    method, as torch's LR schedulers expect when they wrap ``optimizer.step``."""
    @torch.no_grad()
    def step(_self: Any, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        if closure is not None:
            if loss is not None:
                raise ValueError("pass either closure or loss=, not both")
            with torch.enable_grad():
                loss = closure()
        return fused_step(loss)

    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
    return optimizer



def _cpp(optimizer: LRFreeOptimizer) -> LRFreeOptimizer:
    """``fused(optimizer, kernel="cpp")``: the C++ step where supported, else eager."""
    from lrfree import kernels

    kernels.load()  # build now: a missing compiler is an error here, not at a later step
    eager_step = type(optimizer).step.__get__(optimizer)

    def step(loss: Any) -> Any:
        returned = loss
        if optimizer.param_groups[0].get("averaged_in") or \
                (optimizer.needs_loss and loss is None):
            return eager_step(loss=loss)  # raises the eager step's error
        buckets = optimizer._gather()
        plan = kernels.plan(optimizer, buckets) if buckets else None
        if plan is None:  # not supported: the eager step, exactly
            eager_step(loss=loss)
            return returned
        check = optimizer._loss_tensor(loss, optimizer._device())
        bad, sums = kernels.prepare(optimizer, plan, check, optimizer._nonfinite != "unchecked")
        if optimizer._finite(buckets, check, bad):  # the step's one host sync (if checked)
            kernels.run(optimizer, plan, check, sums)
        return returned

    return _replace_step(optimizer, step)
