"""PS-DA-SGD in the spec's notation (section 4), one tensor at a time."""
from __future__ import annotations

import math

import torch

from lrfree.reference._common import active_params, normaliser, scaled_space_inputs


class PSDASGDReference(torch.optim.Optimizer):
    """Same arguments and state names as :class:`lrfree.PSDASGD`; scalars are floats in
    ``self.scalars`` (d, d_hat, r, N0, G0, k)."""

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decouple=True, scaling="adam", alpha_norm="initial", d0=None, d_coef=1.0,
                 growth_rate=1.5, d0_lr=None, warmup="none", warmup_growth=math.inf,
                 schedule_free="auto"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple))
        if d0 is None:  # the default start: the first effective lr is d0_lr (1e-4)
            d0, d0_lr = 1e-6, 1e-4 if d0_lr is None else d0_lr
        self.scaling, self.alpha_norm = scaling, alpha_norm
        self.d_coef, self.growth_rate, self.d0_lr = d_coef, growth_rate, d0_lr
        self.warmup, self.warmup_growth = warmup, warmup_growth
        self.schedule_free = schedule_free
        self.scalars = dict(d=d0, d_hat=0.0, r=0.0, N0=None, G0=0.0, k=0, u=0.0, warming=1.0)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        sc = self.scalars
        items = list(active_params(self))
        if not items:
            return loss
        sc["k"] += 1
        if self.schedule_free == "auto":  # the first step: no LR scheduler, no momentum
            self.schedule_free = self.defaults["betas"][0] > 0 and \
                not any("initial_lr" in g for g in self.param_groups)
        a, grads, direction = scaled_space_inputs(self, items, self.scaling, ("s",),
                                                  momentum=not self.schedule_free)
        # N: mean of a over the elements with a non-zero gradient, frozen at the first step.
        n = normaliser(sc, a, grads, items, self.scaling, self.alpha_norm)
        g_scaled = dict(grads)
        for _, p in items:
            if a[p] is not None:
                g_scaled[p] = g_scaled[p] / torch.sqrt(a[p] / n)  # g' = g / alpha

        loss_sq = sum(float((g_scaled[p] ** 2).sum()) for _, p in items)
        for group, p in items:  # decoupled decay in scaled units: g' + u, u = wd sqrt(N a) x
            if group["weight_decay"] and group["decouple"]:
                root = 1.0 if a[p] is None else torch.sqrt(n * a[p])
                g_scaled[p] = g_scaled[p] + group["weight_decay"] * root * p
        sq_norm = sum(float((g_scaled[p] ** 2).sum()) for _, p in items)
        if sc["k"] == 1:  # n: elements with a non-zero first gradient
            sc["n_live"] = sum(int((grads[p] != 0).sum()) for _, p in items)
        if sc["G0"] == 0 and self.d0_lr is not None:  # first effective lr d0_lr (Adam's a)
            sc["d"] = self.d0_lr * math.sqrt(max(sc["n_live"], 1))
        if sc["G0"] == 0 and loss_sq > 0:  # decay included, once the loss gradient is not 0
            sc["G0"] = math.sqrt(sq_norm)
        # Polyak warm-up: P = max(loss, 0) / ||g'|| (decay included), a distance in scaled
        # units; d rises to min(P, warmup_growth * d_k) until it reaches P once
        warming = self.warmup == "polyak" and sc["warming"] > 0 and sc["G0"] > 0
        polyak = max(float(loss), 0.0) / math.sqrt(sq_norm) if warming and sq_norm > 0 else 0.0
        if warming and math.isinf(self.warmup_growth):  # at once, before the first step
            sc["d"] = max(sc["d"], polyak)
            sc["warming"] = 0.0
        sc["d_used"] = sc["d"]  # the d of this step (iterate-averaging weight d_k^2)
        if self.alpha_norm == "running":
            beta2 = self.param_groups[0]["betas"][1]
            sc["u"] = beta2 * sc["u"] + (1 - beta2) * sq_norm
            denominator = math.sqrt(sc["u"] / (1 - beta2 ** sc["k"]))
        else:
            denominator = sc["G0"]
        lam = sc["d"] / denominator if denominator > 0 else 0.0

        # r_k = r_{k-1} + sum_g lam_g <g', s_{k-1}>, s_k = s_{k-1} + lam_g g'
        for group, p in items:
            s = self.state[p]["s"]
            sc["r"] += lam * group["lr"] * float((g_scaled[p] * s).sum())
        for group, p in items:
            self.state[p]["s"] = self.state[p]["s"] + lam * group["lr"] * g_scaled[p]
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in items))
        d_hat = 2 * sc["r"] / s_norm if s_norm > 0 else 0.0
        sc["d_hat"] = d_hat
        d_next = max(sc["d"], min(self.d_coef * d_hat, self.growth_rate * sc["d"]))
        if warming and not math.isinf(self.warmup_growth):
            d_next = max(d_next, min(polyak, self.warmup_growth * sc["d"]))
            if polyak <= d_next:
                sc["warming"] = 0.0

        if self.schedule_free:
            self._schedule_free_step(items, lam, n, a, direction)
            sc["effective_lr"] = lam * n
            sc["d"] = d_next
            return loss
        for group, p in items:  # x <- x - lam_g N m_hat / a (decoupled decay first)
            lr = lam * group["lr"] * n
            if group["weight_decay"] and group["decouple"]:
                p.mul_(1 - lr * group["weight_decay"])
            step = direction[p] if a[p] is None else direction[p] / a[p]
            p.sub_(lr * step)
        sc["effective_lr"] = lam * n
        sc["d"] = d_next
        return loss

    def _schedule_free_step(self, items, lam, n, a, direction):
        """Spec section 4h, with x stored: z <- z - eta D (D = g / a + wd y), x <- x + c (z - x),
        y <- (1 - beta1) z + beta1 x; c = w_k / sum w, w_k = (largest lam gamma N so far)^2."""
        sc = self.scalars
        peak = max(sc.get("sf_peak", 0.0), lam * n * max(g["lr"] for g in self.param_groups))
        sc["sf_peak"] = peak
        sc["sf_total"] = sc.get("sf_total", 0.0) + peak * peak
        c = peak * peak / sc["sf_total"] if sc["sf_total"] > 0 else 0.0
        for group, p in items:
            state = self.state[p]
            if "z" not in state:
                state["z"], state["x"] = p.detach().clone(), p.detach().clone()
            step = direction[p] if a[p] is None else direction[p] / a[p]
            if group["weight_decay"] and group["decouple"]:
                step = step + group["weight_decay"] * p
            state["z"] = state["z"] - lam * group["lr"] * n * step
            state["x"] = state["x"] + c * (state["z"] - state["x"])
            beta1 = group["betas"][0]
            p.copy_((1 - beta1) * state["z"] + beta1 * state["x"])

    def eval(self):
        """The parameters hold x (schedule-free's average) until train()."""
        for group in self.param_groups:
            for p in group["params"]:
                if "x" in self.state[p]:
                    p.data, self.state[p]["y"] = self.state[p]["x"].clone(), p.data

    def train(self):
        for group in self.param_groups:
            for p in group["params"]:
                if "y" in self.state[p]:
                    p.data = self.state[p].pop("y")
