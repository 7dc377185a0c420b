"""Research prototype (issue 17): PS-DA-SGD with schedule-free interpolation in scaled space.

Issue 17 asks whether "a schedule-free style interpolation in scaled space" should replace
the schedule and the momentum. This is PS-DA-SGD's estimate (ALGORITHMS.md §4: Adam's
scaling, N frozen at step 1, the start d_1 = d0_lr sqrt(n), growth at most x1.5 per step)
driving the schedule-free iteration of Defazio et al. (2024) instead of momentum SGD, in the
spec's notation, one tensor at a time:

    g'_k  = g(y_k) sqrt(N / a_k)                 (the gradient at y, in scaled units)
    lam_k = d_k / G0;  r += lam <g', s>;  s += lam g';  d_hat = 2 r / ||s||
    z    <- z - lam_k N g_k / a_k                (plain SGD in scaled space: no momentum)
    x    <- x + (w_k / W_k)(z - x),  w_k = (lam_k N)^2, W_k = sum of w
    y    <- (1 - beta1) z + beta1 x              (the parameters hold y while training)

`eval()` puts x into the parameters, `train()` puts y back (as schedule-free AdamW). With
plain SGD in scaled space, s = (z_1 - z_k) in scaled units, the distance the D-Adaptation
bound is about. The bound's derivation needs sum_k w_k <g(y_k), z_k - x*> >= 0, which is
what the schedule-free analysis gives (the weighted regret of z against gradients at y bounds
f(x) - f*), so d_hat stays a lower bound on a convex problem.

Variants (registered in the benchmark CLI, never scheduled: the lr multiplier stays 1):

  psdasgd-sf           the rule above, beta1 = 0.9 (schedule-free AdamW's default)
  psdasgd-sf-b95       beta1 = 0.95

Run through the benchmark CLI, any task and budget:

    python benchmarks/schedule_free_prototype.py --budget quick --tasks vit \\
        --optimizers psdasgd-sf --seeds 0,1,2 --out benchmarks/results/schedule_free_quick

Not part of the library: weight decay, param-group multipliers, sharding and non-finite
handling are left out; z and x are both stored (the library would keep z and derive x from
y, as schedule-free AdamW does, for the same 3 state tensors as PSDASGD).
"""
from __future__ import annotations

import math
import sys

import torch

from lrfree.bench import optimizers as registry

from _scaled_prototype import scaled_gradients


class ScheduleFreePSDASGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 d0_lr: float = 1e-4, growth_rate: float = 1.5) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.d0_lr, self.growth_rate = d0_lr, growth_rate
        self.scalars = dict(d=0.0, r=0.0, N=None, G0=0.0, k=0, n=0, W=0.0)
        self.training = True

    @torch.no_grad()
    def _swap(self, to_average: bool) -> None:
        beta1 = self.param_groups[0]["betas"][0]
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if "z" in st:
                    p.copy_(st["x"] if to_average else (1 - beta1) * st["z"] + beta1 * st["x"])

    def eval(self) -> None:
        if self.training:
            self._swap(True)
            self.training = False

    def train(self) -> None:
        if not self.training:
            self._swap(False)
            self.training = True

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        if not self.training:
            raise RuntimeError("step() in eval mode: call train() first")
        sc = self.scalars
        items = [(g, p) for g in self.param_groups if g["lr"] != 0 for p in g["params"]
                 if p.grad is not None]
        sc["k"] += 1
        k = sc["k"]
        beta1, beta2 = self.param_groups[0]["betas"]
        eps = self.param_groups[0]["eps"]
        a = {}
        for _, p in items:  # a_k = sqrt(v_hat) + eps (Adam's scaling without momentum)
            st = self.state[p]
            if "z" not in st:
                st.update(v=torch.zeros_like(p), s=torch.zeros_like(p),
                          z=p.detach().clone(), x=p.detach().clone())
            st["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            a[p] = (st["v"] / (1 - beta2 ** k)).sqrt() + eps
        norm, scaled = scaled_gradients(sc, a, [p for _, p in items], self.d0_lr)
        lam = sc["d"] / sc["G0"] if sc["G0"] > 0 else 0.0
        for group, p in items:  # r += lam <g', s>, s += lam g'
            st = self.state[p]
            sc["r"] += lam * group["lr"] * float((scaled[p] * st["s"]).sum())
            st["s"].add_(scaled[p], alpha=lam * group["lr"])
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in items))
        d_hat = 2 * sc["r"] / s_norm if s_norm > 0 else 0.0
        eta = lam * norm  # the step in Adam's units (group multiplier 1)
        sc["W"] += eta * eta
        weight = eta * eta / sc["W"] if sc["W"] > 0 else 0.0
        for group, p in items:
            st = self.state[p]
            st["z"].sub_(eta * group["lr"] * p.grad / a[p])
            st["x"].lerp_(st["z"], weight)
            p.copy_((1 - beta1) * st["z"] + beta1 * st["x"])
        for group in self.param_groups:
            group["effective_lr"] = eta * group["lr"]
        sc["d"] = max(sc["d"], min(d_hat, self.growth_rate * sc["d"]))
        return loss


VARIANTS = {"psdasgd-sf": dict(betas=(0.9, 0.999)),
            "psdasgd-sf-b95": dict(betas=(0.95, 0.999))}


def register() -> None:
    for name, kwargs in VARIANTS.items():
        registry._FIXED[name] = registry.OptimizerSpec(
            name, "ablation", lambda params, kw=kwargs: ScheduleFreePSDASGD(params, **kw),
            registry._group_effective_lr, scheduled=False, pass_loss=True, train_eval=True)


if __name__ == "__main__":
    register()
    from lrfree.bench.cli import main

    sys.exit(main(sys.argv[1:], program=("python", "benchmarks/schedule_free_prototype.py")))
