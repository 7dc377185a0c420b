"""D-Adaptation SGD (Defazio & Mishchenko 2023) in dual-averaging form, one tensor at a time."""
from __future__ import annotations

import math

import torch

from lrfree.reference._common import active_params


class DAdaptSGDReference(torch.optim.Optimizer):
    """Same arguments and state names as :class:`lrfree.DAdaptSGD`; scalars are floats in
    ``self.scalars`` (d, d_hat, r, G0, k)."""

    def __init__(self, params, lr=1.0, momentum=0.0, weight_decay=0.0, decouple=True, d0=1e-6,
                 growth_rate=math.inf):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      decouple=decouple))
        self.growth_rate = growth_rate
        self.scalars = dict(d=d0, d_hat=0.0, r=0.0, G0=0.0, k=0)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        sc = self.scalars
        items = list(active_params(self))
        if not items:
            return loss
        sc["k"] += 1
        grads, loss_sq = {}, 0.0
        for group, p in items:
            state = self.state[p]
            if "step" not in state:
                state.update(step=0, s=torch.zeros_like(p), x0=p.clone())
            state["step"] += 1
            grads[p] = p.grad.clone()
            loss_sq += float((grads[p] ** 2).sum())
            if group["weight_decay"]:  # decay joins the gradient: at x (coupled) or z = x0 - s
                at = state["x0"] - state["s"] if group["decouple"] else p
                grads[p] = grads[p] + group["weight_decay"] * at
        if sc["G0"] == 0 and loss_sq > 0:  # decay included, once the loss gradient is not 0
            sc["G0"] = math.sqrt(sum(float((grads[p] ** 2).sum()) for _, p in items))
        lam = sc["d"] / sc["G0"] if sc["G0"] > 0 else 0.0
        for group, p in items:
            sc["r"] += lam * group["lr"] * float((grads[p] * self.state[p]["s"]).sum())
        for group, p in items:
            self.state[p]["s"] = self.state[p]["s"] + lam * group["lr"] * grads[p]
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in items))
        sc["d_hat"] = 2 * sc["r"] / s_norm if s_norm > 0 else 0.0
        d_next = max(sc["d"], min(sc["d_hat"], self.growth_rate * sc["d"]))
        for group, p in items:
            state = self.state[p]
            z = state["x0"] - state["s"]
            p.copy_(group["momentum"] * p + (1 - group["momentum"]) * z)
        sc["effective_lr"] = lam
        sc["d"] = d_next
        return loss
