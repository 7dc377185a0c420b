"""D-Adaptation SGD (Defazio & Mishchenko 2023), as in the reference `dadaptation` package."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lrfree.optim._base import (
    Bucket, LRFreeOptimizer, check_positive, check_unit_interval, sum_dot, sum_sq, total,
)
from lrfree.rules.dadapt import DAdaptEstimate


class DAdaptSGD(LRFreeOptimizer):
    r"""SGD with the D-Adaptation estimate of the distance to the solution.

    In dual-averaging form, with :math:`\gamma_k` the group's ``lr`` and
    :math:`\lambda_k = d_k\gamma_k/\lVert g_1\rVert`:

    .. math::
        r_k = r_{k-1} + \lambda_k\langle g_k, s_{k-1}\rangle,\quad
        s_k = s_{k-1} + \lambda_k g_k,\quad
        d_{k+1} = \max(d_k, \min(2r_k/\lVert s_k\rVert,\ \mathrm{growth\_rate}\cdot d_k)),

        z_{k+1} = x_0 - s_k,\quad
        x_{k+1} = \mu x_k + (1-\mu) z_{k+1}

    (momentum :math:`\mu` is primal averaging, as in the reference package, whose
    trajectory this follows to float rounding). ``effective_lr`` = :math:`\lambda_k`, the
    lr torch.optim.SGD would need without momentum.

    Args:
        params: parameters or param groups; ``lr`` multiplies the estimated step,
            per-group values are relative multipliers (the reference package raises for
            them), ``lr=0`` freezes a group.
        momentum: primal-averaging coefficient in [0, 1).
        weight_decay: decoupled by default: ``weight_decay * z`` (z = x_0 - s, the dual
            iterate that takes the step) joins the gradient in s, so z shrinks by
            ``effective_lr * weight_decay`` per step and the estimate's sums see the move;
            ``decouple=False`` adds ``weight_decay * x`` (L2), as the reference package
            does. Without momentum (x = z) the two are the same. G0 includes the decay
            term in both (docs/algorithms.md, "Weight decay").
        d0, growth_rate, foreach, nonfinite, state_dtype, process_group: as in
            :class:`lrfree.PSDASGD`.

    State: ``s`` and the anchor ``x0`` per parameter.

    Example::

        opt = lrfree.DAdaptSGD(model.parameters(), momentum=0.9)
    """

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, decouple: bool = True, d0: float = 1e-6,
                 growth_rate: float = float("inf"), *, foreach: bool | None = None,
                 nonfinite: str = "skip", state_dtype: str = "float32",
                 process_group: Any = None) -> None:
        check_unit_interval("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_positive("d0", d0)
        check_positive("growth_rate", growth_rate, allow_inf=True)
        if growth_rate < 1:
            raise ValueError(f"growth_rate={growth_rate!r} is invalid: it must be >= 1")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        decouple=bool(decouple), d0=d0, growth_rate=growth_rate, d=d0,
                        d_hat=0.0)
        super().__init__(params, defaults, foreach=foreach, nonfinite=nonfinite,
                         state_dtype=state_dtype, process_group=process_group)

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("s", "x0")

    def _initial_state(self, name: str, p: Tensor, dtype: torch.dtype) -> Tensor:
        if name == "x0":
            return p.detach().to(dtype, copy=True)
        return super()._initial_state(name, p, dtype)

    def _update(self, buckets: list[Bucket], loss: Tensor | None) -> None:
        group0 = self.param_groups[0]
        device, dtype = self._device(), self._scalar_dtype()
        est = self._estimate(lambda dev, dt: DAdaptEstimate.initial(group0["d0"], dev, dt), device)
        dot_gs, sq_g, sq_g_weighted, sq_s, sq_loss = [], [], [], [], []
        # from the groups, not the buckets: every rank must reduce the same number of sums
        decayed = any(g["weight_decay"] != 0 for g in self.param_groups)
        for b in buckets:
            torch._foreach_add_(b.states["step"], 1.0)
            gamma, wd = b.group["lr"], b.group["weight_decay"]
            # decay joins the gradient everywhere (G0, s, r): at x, the point of the
            # gradient (coupled), or at z = x0 - s, the dual iterate that takes the step
            # (decoupled). Either way the iterate moves by what s holds, and G0 >= wd D
            # keeps effective_lr * wd <= 1 while d <= D (docs/algorithms.md, "Weight decay").
            if wd != 0:  # the loss gradient's norm: the decay alone does not start d
                sq_loss.append(sum_sq(b.grads).to(dtype))
                at = _cast(b.params, b.grads) if not b.group["decouple"] else \
                    torch._foreach_sub(b.states["x0"], b.states["s"])
                b.grads = torch._foreach_add(b.grads, _cast(at, b.grads), alpha=wd)
            sq = sum_sq(b.grads).to(dtype)
            if wd == 0:
                sq_loss.append(sq)
            dot_gs.append(gamma * sum_dot(b.grads, b.states["s"]).to(dtype))
            sq_g.append(sq)
            sq_g_weighted.append(gamma * gamma * sq)
            sq_s.append(sum_sq(b.states["s"]).to(dtype))
        parts_of = (sq_g, dot_gs, sq_g_weighted, sq_s) + ((sq_loss,) if decayed else ())
        sq_norm_g, dot, sq_weighted, sq_norm_s, *loss_part = self._reduce(
            [total(parts, device, dtype) for parts in parts_of])
        DAdaptEstimate.set_grad_norm0(est, sq_norm_g, loss_part[0] if decayed else None)
        lam = DAdaptEstimate.base_step(est)
        DAdaptEstimate.update(est, lam, dot, sq_weighted, sq_norm_s, group0["growth_rate"])
        for b in buckets:
            group = b.group
            step = (lam * group["lr"]).to(b.grads[0].dtype)
            torch._foreach_add_(b.states["s"], torch._foreach_mul(b.grads, step))
            z = torch._foreach_sub(b.states["x0"], b.states["s"])
            momentum = group["momentum"]
            if b.params[0].dtype in (torch.float16, torch.bfloat16):
                # average in float32 (z is float32 state by default) and round once
                mixed = [p.float() for p in b.params]
                torch._foreach_mul_(mixed, momentum)
                torch._foreach_add_(mixed, _cast(z, mixed), alpha=1.0 - momentum)
                torch._foreach_copy_(b.params, mixed)
            else:
                torch._foreach_mul_(b.params, momentum)
                torch._foreach_add_(b.params, z, alpha=1.0 - momentum)
        for group in self.param_groups:
            group["d"], group["d_hat"] = est["d"], est["d_hat"]
            group["effective_lr"] = lam * group["lr"]


def _cast(tensors: list[Tensor], reference: list[Tensor]) -> list[Tensor]:
    if tensors[0].dtype == reference[0].dtype:
        return tensors
    return [t.to(r.dtype) for t, r in zip(tensors, reference)]
