"""Research prototype (issue 17): can the step see that it overshoots, without the loss?

D-Adaptation's bound is a distance, blind to curvature; where it overestimates the largest
stable lr (segmentation and logreg at the quick budget, docs/algorithms.md §4f) nothing
brings the step back. This prototype measures, along the last step u = x_k - x_{k-1}, the
directional derivative at both ends:

    phi'(1) = <g_{k+1}, u>     (the next gradient: its batch noise is independent of u)
    phi'(0) = <m_hat_k, u>     (the momentum the step was taken along; always < 0)

On a quadratic, rho = phi'(1) / -phi'(0) = (step / line-search step) - 1: 0 at the exact
line-search step, 1 where the loss along u stops falling. Both are inner products of a
gradient with a displacement, so rho is the same in x and in Adam's scaled units and does
not move when the parameters are scaled uniformly (requirement 1); a converged block adds
zero to both (requirement 2). rho is smoothed by an EMA of numerator and denominator.

  overshoot-trace    PS-DA-SGD as it was (start d0_lr = 1e-4, growth unbounded: the default
                     before §4g); rho recorded.
  overshoot-cap<R>   the step is lam_k = kappa_k d_k / G0 with kappa_k in (0, 1]:
                     kappa_k = min(1, kappa_{k-1} ((1 + R) / (1 + rho_k))^0.5), the
                     multiplicative correction that would bring rho to R, damped.
  growth<G>          PS-DA-SGD with d_k <= G d_{k-1} (Prodigy's `growth_rate`): does a slower
                     climb to the same estimate avoid the early collapse (segmentation)?
  adam-trace@<lr>    the same rule with d fixed (lam = lr / N): Adam at a fixed lr, rho
                     recorded, for reference.

With LRFREE_TRACE=path every step appends [name, run id, k, rho, kappa, effective lr] as one
JSON line to that file. Run through the benchmark CLI, e.g.

    LRFREE_TRACE=/tmp/rho.jsonl python benchmarks/step_overshoot.py --budget quick \\
        --tasks segmentation --optimizers overshoot-trace --seeds 0,1,2 --out /tmp/ov

`python benchmarks/step_overshoot.py --summarize TRACE...` (.jsonl or .jsonl.gz) prints rho @ effective lr at a few
steps, one row per run (#n: the n-th run of that name in the file, in the CLI's seed order).

Not part of the library: weight decay, sharding and non-finite handling are left out.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import sys

import torch

from lrfree.bench import optimizers as registry

from _scaled_prototype import adam_moments, scaled_gradients


class OvershootControlled(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 d0_lr: float = 1e-4, target: float = math.inf, fixed_lr: float | None = None,
                 smoothing: float = 0.9, damping: float = 0.5, growth: float = math.inf,
                 tag: str = "") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.d0_lr, self.target, self.fixed_lr = d0_lr, target, fixed_lr
        self.smoothing, self.damping, self.growth, self.tag = smoothing, damping, growth, tag
        self.sc = dict(d=0.0, r=0.0, N=None, G0=0.0, k=0, n=0, kappa=1.0,
                       num=0.0, den=0.0, last_descent=None)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        sc = self.sc
        items = [(g, p) for g in self.param_groups if g["lr"] != 0 for p in g["params"]
                 if p.grad is not None]
        sc["k"] += 1
        k = sc["k"]
        betas = self.param_groups[0]["betas"]
        eps = self.param_groups[0]["eps"]
        a, direction = {}, {}
        along_last = 0.0  # phi'(1) = <g_k, x_k - x_{k-1}>
        for _, p in items:
            st = self.state[p]
            if "m" not in st:
                st.update(m=torch.zeros_like(p), v=torch.zeros_like(p),
                          s=torch.zeros_like(p), u=torch.zeros_like(p))
            along_last += float((p.grad * st["u"]).sum())
            a[p], direction[p] = adam_moments(st, p.grad, betas, eps, k)
        rho = math.nan
        if sc["last_descent"] is not None:
            w = self.smoothing
            sc["num"] = w * sc["num"] + (1 - w) * along_last
            sc["den"] = w * sc["den"] + (1 - w) * sc["last_descent"]
            if sc["den"] > 0:
                rho = sc["num"] / sc["den"]
                if math.isfinite(self.target):
                    factor = ((1 + self.target) / max(1 + rho, 1e-3)) ** self.damping
                    sc["kappa"] = min(1.0, sc["kappa"] * min(max(factor, 0.5), 2.0))
        norm, scaled = scaled_gradients(sc, a, [p for _, p in items], self.d0_lr)
        bound = sc["d"] / sc["G0"] if sc["G0"] > 0 else 0.0
        lam = self.fixed_lr / norm if self.fixed_lr is not None else bound
        lam *= sc["kappa"]
        for group, p in items:  # the D-Adaptation sums see the step actually taken
            st = self.state[p]
            sc["r"] += lam * group["lr"] * float((scaled[p] * st["s"]).sum())
            st["s"].add_(scaled[p], alpha=lam * group["lr"])
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in items))
        if s_norm > 0:
            sc["d"] = min(max(sc["d"], 2 * sc["r"] / s_norm), self.growth * sc["d"])
        descent = 0.0  # -phi'(0) = <m_hat_k, -u>
        for group, p in items:
            st = self.state[p]
            torch.mul(direction[p] / a[p], -lam * group["lr"] * norm, out=st["u"])
            descent -= float((direction[p] * st["u"]).sum())
            p.add_(st["u"])
        sc["last_descent"] = descent
        for group in self.param_groups:
            group["effective_lr"] = lam * group["lr"] * norm
        path = os.environ.get("LRFREE_TRACE")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps([self.tag, id(self), k, rho, sc["kappa"],
                                    lam * self.param_groups[0]["lr"] * norm]) + "\n")
        return loss


def _spec(name: str, **kw) -> registry.OptimizerSpec:
    return registry.OptimizerSpec(
        name, "ablation", lambda params: OvershootControlled(params, tag=name, **kw),
        registry._group_effective_lr, pass_loss=True)


def register() -> None:
    registry._FIXED["overshoot-trace"] = _spec("overshoot-trace")
    for target in ("0.5", "1", "2", "4"):
        registry._FIXED[f"overshoot-cap{target}"] = _spec(f"overshoot-cap{target}",
                                                          target=float(target))
    for growth in ("1.5", "2"):
        registry._FIXED[f"growth{growth}"] = _spec(f"growth{growth}", growth=float(growth))
    for lr in ("1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1"):
        registry._FIXED[f"adam-trace@{lr}"] = _spec(f"adam-trace@{lr}", fixed_lr=float(lr))


def summarize(path: str, steps: tuple[int, ...] = (3, 5, 8, 9, 10, 11, 15, 30, 60, 300,
                                                   1000)) -> str:
    """Markdown table of rho / effective lr at `steps`, one row per run of a trace file."""
    runs: dict[tuple[str, int], dict[int, tuple[float, float]]] = {}
    opener = gzip.open if path.endswith(".gz") else open
    for line in opener(path, "rt"):
        name, run, k, rho, _, lr = json.loads(line)
        runs.setdefault((name, run), {})[k] = (rho, lr)
    out = ["| run | " + " | ".join(f"step {k}" for k in steps) + " |",
           "|---|" + "---|" * len(steps)]
    seen: dict[str, int] = {}
    for (name, _), trace in runs.items():
        seen[name] = seen.get(name, 0) + 1
        cells = [f"{trace[k][0]:+.3g} @ {trace[k][1]:.2g}" if k in trace else "" for k in steps]
        out.append(f"| {name} #{seen[name]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarize"]:
        print("\n\n".join(f"`{path}`\n\n" + summarize(path) for path in sys.argv[2:]))
        sys.exit(0)
    register()
    from lrfree.bench.cli import main

    sys.exit(main(sys.argv[1:], program=("python", "benchmarks/step_overshoot.py")))
