"""PS-SPS (spec section 5) and, with scaling="none" and beta1 = 0, SPS: one tensor at a time."""
from __future__ import annotations

import torch

from lrfree.reference._common import active_params, loss_value, normaliser, scaled_space_inputs


class PSSPSReference(torch.optim.Optimizer):
    """Same arguments and state names as :class:`lrfree.PSSPS`; scalars are floats in
    ``self.scalars`` (eta, cap, floor, N0, k)."""

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, c=0.5, f_star=0.0,
                 delta=1e-8, cap_start=1e-2, cap_growth=1.02, weight_decay=0.0, decouple=True,
                 scaling="adam", alpha_norm="initial"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple))
        self.scaling, self.alpha_norm = scaling, alpha_norm
        self.c, self.f_star, self.delta = c, f_star, delta
        self.cap_start, self.cap_growth = cap_start, cap_growth
        self.scalars = dict(eta=0.0, cap=0.0, floor=0.0, N0=None, k=0)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sc = self.scalars
        items = list(active_params(self))
        if not items:
            return loss
        sc["k"] += 1
        a, grads, direction = scaled_space_inputs(self, items, self.scaling)
        n = normaliser(sc, a, grads, items, self.scaling, self.alpha_norm)
        g_scaled = dict(grads)
        for _, p in items:
            if a[p] is not None:
                g_scaled[p] = g_scaled[p] / torch.sqrt(a[p] / n)

        # eta_P = max(l - f*, 0) / (c ||g'||^2 + delta), capped smoothly.
        sq_norm = sum(float((g_scaled[p] ** 2).sum()) for _, p in items)
        eta_polyak = (max(loss_value(loss) - self.f_star, 0.0) / (self.c * sq_norm + self.delta)
                      if sq_norm > 0 else 0.0)  # a zero gradient says nothing: no step
        if sc["floor"] == 0:
            sc["floor"] = self.cap_start * eta_polyak
        if sc["cap"] == 0:
            sc["cap"] = sc["floor"]
        eta = min(eta_polyak, sc["cap"])
        sc["cap"] = self.cap_growth * max(eta, sc["floor"])
        sc["eta"] = eta

        for group, p in items:
            lr = group["lr"] * eta * n
            if group["weight_decay"] and group["decouple"]:
                p.mul_(1 - lr * group["weight_decay"])
            step = direction[p] if a[p] is None else direction[p] / a[p]
            p.sub_(lr * step)
        sc["effective_lr"] = eta * n
        return loss
