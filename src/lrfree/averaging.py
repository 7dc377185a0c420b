"""Iterate averaging: the evaluation point that removes the need for a schedule.

Training follows the optimizer's own path x_k. Beside it each parameter keeps a weighted
average of the iterates (spec section 4b)

    w_k = (scale_k / gamma_k)^2 * k^p   W_k = W_{k-1} + w_k   x_avg_k = x_avg_{k-1} + (w_k / W_k)(x_k - x_avg_{k-1})

with ``scale_k`` the D-Adaptation estimate d_k used at step k (1 for the Polyak methods),
``gamma_k`` the user's lr multiplier at step k (the largest of the param groups) and p = 8:
about 90% of the weight sits on the last ~23% of the steps at any point, so no run length
is needed. A constant multiplier leaves the weights as they are; a schedule that decays to
zero moves them onto its small-step iterates, so that the average tends to the last
iterate instead of holding iterates from the large-step part of the run
(docs/algorithms.md §4b, issue 17).

W is never stored (k^8 overflows float32 near 6e4 steps): the optimizer keeps the ratio
rho_k = W_k / w_k, which obeys rho_k = 1 + rho_{k-1} * w_{k-1} / w_k and stays below k.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn


def update(est: dict[str, Tensor], params: list[list[Tensor]], averages: list[list[Tensor]],
           scale: Tensor, power: float, gamma: float = 1.0) -> None:
    """Fold this step's iterates into the averages; ``est["step"]`` is this step's k and
    ``gamma`` its lr multiplier (a Python float; a step at 0 moved nothing and is left out)."""
    if gamma == 0:
        return
    k = est["step"]
    scale = scale.to(k.dtype)
    if gamma != 1:  # times the reciprocal, as the JAX port (where a division by a constant
        scale = scale * (1.0 / gamma)  # may compile to this product): the same bits in both
    if "avg_ratio" in est:
        shrink = (est["avg_scale"] / scale) ** 2 * ((k - 1) / k) ** power
        est["avg_ratio"] = 1.0 + est["avg_ratio"] * shrink
    else:
        est["avg_ratio"] = torch.ones_like(k)
    est["avg_scale"] = scale
    weight = 1.0 / est["avg_ratio"]
    for xs, avgs in zip(params, averages):
        diff = torch._foreach_sub(xs, avgs)
        torch._foreach_mul_(diff, weight.to(diff[0].dtype))
        torch._foreach_add_(avgs, diff)


def swap(pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
    """Exchange parameter values with their averages in place, bitwise (one temporary at a
    time, so no second full copy of the model is ever held)."""
    with torch.no_grad():
        for p, avg in pairs:
            held = p.detach().clone()
            p.copy_(avg)
            avg.copy_(held)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[Any], forward=None) -> None:
    """Recompute BatchNorm running statistics at the current weights (e.g. inside
    ``with opt.averaged():``): running statistics gathered along the training path do not
    match the averaged weights.

    ``batches`` yields model inputs; ``forward(model, batch)`` runs one (default:
    ``model(batch)``). Statistics are a plain average over all the batches.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for batch in batches:
        (forward or (lambda mdl, b: mdl(b)))(model, batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


class AveragingMixin:
    """``eval()``/``train()``/``averaged()`` for optimizers that keep ``x_avg`` state."""

    param_groups: list[dict[str, Any]]
    state: Any

    def _average_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        from lrfree import distributed

        for group in self.param_groups:
            for p in group["params"]:
                avg = self.state[p].get("x_avg") if p in self.state else None
                if avg is not None:  # a complex parameter's average is of its real view
                    local = distributed.local(p)
                    yield (torch.view_as_real(local) if local.is_complex() else local), avg

    def _schedule_free_swap(self, to_average: bool) -> None:
        """y <-> x from y = (1 - beta1) z + beta1 x: x = lerp(y, z, 1 - 1/beta1) and back
        y = lerp(x, z, 1 - beta1), each group with its own beta1 (to float rounding, not
        bitwise: the average is not stored, docs/algorithms.md §4h)."""
        from lrfree import distributed

        with torch.no_grad():
            for group in self.param_groups:
                beta1 = group["betas"][0]
                weight = 1.0 - 1.0 / beta1 if to_average else 1.0 - beta1
                for p in group["params"]:
                    z = self.state[p].get("z") if p in self.state else None
                    if z is None:  # never stepped: y = z = x
                        continue
                    local = distributed.local(p)
                    local = torch.view_as_real(local) if local.is_complex() else local
                    if local.dtype == z.dtype:
                        local.lerp_(z, weight)
                    else:  # low-precision parameter, float32 z: one rounding
                        local.copy_(local.to(z.dtype).lerp_(z, weight))

    def eval(self) -> None:
        """Put the averaged weights into the model (for evaluation or export).

        Idempotent; the training weights are kept in the optimizer state until ``train()``.
        """
        group0 = self.param_groups[0]
        # PSDASGD's "auto" before its first step has no average yet and may settle on the
        # momentum step: nothing to swap in, and nothing that a later train() must undo
        sf = group0.get("schedule_free") is True
        if not (group0.get("average") or sf) or group0.get("averaged_in"):
            return
        if sf:
            self._schedule_free_swap(True)
        else:
            swap(self._average_pairs())
        group0["averaged_in"] = True

    def train(self) -> None:
        """Put the training weights back (bitwise with ``average=True``; to float rounding
        with ``schedule_free=True``); idempotent."""
        group0 = self.param_groups[0]
        if not group0.get("averaged_in"):
            return
        if group0.get("schedule_free") is True:
            self._schedule_free_swap(False)
        else:
            swap(self._average_pairs())
        group0["averaged_in"] = False

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """``with opt.averaged(): evaluate(model)`` — the averaged weights inside, the
        training weights restored on exit (also on an exception)."""
        was_in = bool(self.param_groups[0].get("averaged_in"))
        self.eval()
        try:
            yield
        finally:
            if not was_in:
                self.train()
