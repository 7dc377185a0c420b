"""PS-DoG: DoG (distance over gradients) run in the parameter-scaled space of Adam."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from lrfree.optim import _scaled
from lrfree.optim._base import (
    Bucket, check_betas, check_choice, check_positive, dots, sum_sq,
)
from lrfree.rules.dog import DoGStep
from lrfree.scaling import Scaling, get_scaling


class PSDoG(_scaled.ScaledSpaceOptimizer):
    r"""Learning-rate-free Adam from DoG's step in the Adam-rescaled space.

    With ``a_k`` from the scaling, :math:`N = \mathrm{mean}(a_1)` (frozen), the scaled
    gradient :math:`g'_k = g_k\sqrt{N/a_k}` and the scaled displacement
    :math:`\delta_k = \sqrt{a_k/N}\,(x_k - x_0)`:

    .. math::
        \bar r_k = \max(r_\epsilon, \max_{i\le k}\lVert\delta_i\rVert),\quad
        \eta_k = \bar r_k / \sqrt{\textstyle\sum_{i\le k}\lVert g'_i\rVert^2},\quad
        x_{k+1} = x_k - \gamma_k\eta_k N\,\hat m_k / a_k

    with :math:`r_\epsilon = \mathrm{reps\_rel}\cdot(1 + \lVert\sqrt{a_1/N}\,x_0\rVert)`.
    ``effective_lr`` = :math:`\gamma_k\eta_k N` (Adam's lr for the same step) and
    ``dog_step`` = :math:`\eta_k` are written into every group after each step.

    State: ``m``, ``v``, ``x0`` (3 tensors; DoG measures distance from the start).

    Example::

        opt = lrfree.PSDoG(model.parameters())

    Failure modes: the first steps are tiny (``reps_rel`` of the scaled parameter norm) and
    the accumulated gradient norm only grows, so without momentum of the iterates the step
    can decay too early on long runs; ``reps_rel`` sets the start.

    bf16/fp16 parameters: those first steps are far below half an ulp and round away, so
    the distance is measured from float32 state: ``x0`` absorbs each step's rounding error,
    and ``x - x0`` is the sum of the float32 steps (the estimate tracks a float32 run).
    This needs the default ``state_dtype="float32"``; with ``"param"`` x0 is bf16 too and
    the step never grows on bf16 parameters.
    """

    _rule_state = ("x0",)

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, reps_rel: float = 1e-6, weight_decay: float = 0.0,
                 decouple: bool = True, scaling: str | Scaling = "adam",
                 alpha_norm: str = "initial", average: bool = False, average_power: float = 8.0,
                 *, foreach: bool | None = None, nonfinite: str = "skip",
                 state_dtype: str = "float32", process_group: Any = None) -> None:
        betas = check_betas(betas)
        check_positive("eps", eps, allow_zero=True)
        check_positive("reps_rel", reps_rel)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_choice("alpha_norm", alpha_norm, ("initial", "none"))
        check_choice("average", average, (True, False))
        check_positive("average_power", average_power, allow_zero=True)
        scaling = get_scaling(scaling)
        if scaling.name in ("adam", "amsgrad", "rmsprop", "adafactor") and eps == 0:
            raise ValueError("eps=0 is invalid with this scaling: use eps > 0 (default 1e-8)")
        defaults = dict(lr=lr, betas=betas, eps=eps, reps_rel=reps_rel,
                        weight_decay=weight_decay, decouple=bool(decouple), scaling=scaling.name,
                        alpha_norm=alpha_norm, average=average, average_power=average_power,
                        dog_step=0.0)
        super().__init__(params, defaults, foreach=foreach, nonfinite=nonfinite,
                         state_dtype=state_dtype, process_group=process_group)
        self._scaling = scaling

    def _initial_state(self, name: str, p: Tensor, dtype: torch.dtype) -> Tensor:
        if name == "x0":
            return p.detach().to(dtype, copy=True)
        return super()._initial_state(name, p, dtype)

    def _update(self, buckets: list[Bucket], loss: Tensor | None) -> None:
        group0 = self.param_groups[0]
        est, first, norm = self._enter_scaled_space(buckets, DoGStep.initial)
        device, dtype = self._device(), self._scalar_dtype()
        sq_dist, sq_x0 = [], []
        for b in buckets:
            sq_dist.append(_sq_norm_weighted(
                b, torch._foreach_sub(b.params, b.states["x0"]), dtype) / norm)
            if first:
                sq_x0.append(_sq_norm_weighted(b, b.states["x0"], dtype) / norm)
        sums = [torch.stack(parts).sum() if parts else torch.zeros((), device=device, dtype=dtype)
                for parts in (sq_dist, sq_x0)]
        sums.append(_scaled.sq_norm_scaled(buckets, norm, device, dtype))
        distance, x0_norm, sq_norm_g = self._reduce(sums)
        if first:
            est["r_eps"] = group0["reps_rel"] * (1.0 + torch.sqrt(x0_norm))
        eta = DoGStep.update(est, distance, sq_norm_g)
        self._step_low_precision(buckets, est, eta, norm)
        for group in self.param_groups:
            group["dog_step"] = eta

    def _step_low_precision(self, buckets: list[Bucket], est: dict[str, Tensor], eta: Tensor,
                            norm: Tensor) -> None:
        """Take the step; bf16/fp16 parameters with float32 state take it in float32 and
        round once, and the rounding error goes into ``x0``.

        DoG's step grows only as far as the iterates move from x0. The first steps are
        ``reps_rel`` (1e-6) of the parameter norm, far below half a bf16 ulp (2^-9
        relative): rounded, the parameters never move, the distance stays 0 and so does
        the step. With ``x0 <- x0 + (round(x) - x)`` after each step, ``x - x0`` is the sum
        of the float32 steps taken, so the distance grows as in float32 until the steps
        are large enough to move the parameters.
        """
        masters: dict[int, list[Tensor]] = {}
        stepped = []
        for b in buckets:
            if b.params[0].dtype in (torch.float16, torch.bfloat16) \
                    and b.states["x0"][0].dtype == torch.float32:
                masters[id(b)] = [p.float() for p in b.params]
                b = dataclasses.replace(b, params=masters[id(b)])
            stepped.append(b)
        self._take_step(stepped, est, eta, norm, torch.ones_like(eta))
        for b in buckets:
            if id(b) in masters:
                torch._foreach_copy_(b.params, masters[id(b)])
                rounding = torch._foreach_sub([p.float() for p in b.params], masters[id(b)])
                torch._foreach_add_(b.states["x0"], rounding)


def _sq_norm_weighted(b: Bucket, xs: list[Tensor], dtype: torch.dtype) -> Tensor:
    """sum_i <a_i, xs_i^2>: N times the squared norm ||sqrt(a / N) xs||^2 of the scaled space."""
    if b.denoms is None:
        return sum_sq(xs).to(dtype)
    per_tensor = dots(b.denoms, torch._foreach_mul(xs, xs)).to(dtype)
    if b.factors is None:
        return per_tensor.sum()
    return (per_tensor * b.factors.to(dtype)).sum()
