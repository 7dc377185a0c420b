"""PS-DoG in paper notation, one tensor at a time."""
from __future__ import annotations

import math

import torch

from lrfree.reference._common import active_params, normaliser, scaled_space_inputs


class PSDoGReference(torch.optim.Optimizer):
    """Same arguments and state names as :class:`lrfree.PSDoG`; scalars in ``self.scalars``."""

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, reps_rel=1e-6,
                 weight_decay=0.0, decouple=True, scaling="adam", alpha_norm="initial"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple))
        self.scaling, self.alpha_norm, self.reps_rel = scaling, alpha_norm, reps_rel
        self.scalars = dict(rbar=0.0, G=0.0, r_eps=None, N0=None, k=0)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        sc = self.scalars
        items = list(active_params(self))
        if not items:
            return loss
        sc["k"] += 1
        for _, p in items:  # DoG measures distance from where each parameter started
            if "x0" not in self.state[p]:
                self.state[p]["x0"] = p.clone()
        a, grads, direction = scaled_space_inputs(self, items, self.scaling)
        n = normaliser(sc, a, grads, items, self.scaling, self.alpha_norm)

        def alpha_sq(p):  # alpha^2 = a / N
            return torch.ones_like(p) if a[p] is None else a[p] / n

        if sc["r_eps"] is None:
            x0_norm = math.sqrt(sum(float((alpha_sq(p) * self.state[p]["x0"] ** 2).sum())
                                    for _, p in items))
            sc["r_eps"] = self.reps_rel * (1 + x0_norm)
        distance = math.sqrt(sum(float((alpha_sq(p) * (p - self.state[p]["x0"]) ** 2).sum())
                                 for _, p in items))
        sc["rbar"] = max(sc["rbar"], distance, sc["r_eps"])
        sc["G"] += sum(float((grads[p] ** 2 / alpha_sq(p)).sum()) for _, p in items)
        eta = sc["rbar"] / math.sqrt(sc["G"]) if sc["G"] > 0 else 0.0
        for group, p in items:
            lr = group["lr"] * eta * n
            if group["weight_decay"] and group["decouple"]:
                p.mul_(1 - lr * group["weight_decay"])
            p.sub_(lr * (direction[p] if a[p] is None else direction[p] / a[p]))
        sc["eta"], sc["effective_lr"] = eta, eta * n
        return loss
