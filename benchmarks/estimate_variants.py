"""Research prototypes of the PS-DA-SGD estimate (issue 17): what else could start it fast?

Each variant is PS-DA-SGD as specified (ALGORITHMS.md §4, default start d0_lr = 1e-6,
Adam's scaling, N frozen at step 1, bias-corrected momentum), one tensor at a time in the
spec's notation, with one change to how d_hat is formed or how the step is bounded:

  estimate-tensor-max   d_hat = sqrt(n) * max over tensors t of 2 r_t / (||s_t|| sqrt(n_t)),
                        the global bound included: the largest per-element (RMS) distance any
                        one tensor certifies. Meant for fine-tunes, where the pretrained
                        tensors' noise dilutes the global bound (docs/algorithms.md §4e).
  estimate-tensor-lcb   the same with each r_t lowered by 2 sqrt(sum of its squared
                        increments): a tensor counts only once its numerator is clear of
                        its own noise.
  estimate-inflated     s and r accumulate g' / sqrt(1 - beta2^k): the un-bias-corrected
                        inflation DAdaptAdam and Prodigy get from sqrt(v_k) (§8), for the
                        estimate alone; the step is unchanged.
  step-polyak-cap       the step lambda_k is min(d_k / G0, loss / (0.5 ||g'||^2)) while the
                        loss is positive: the Polyak step as an upper bound.

`estimate-global` is the unchanged rule (it matches lrfree.PSDASGD to float rounding; checked
in main() below on a small network). Run through the benchmark CLI, any task and budget:

    python benchmarks/estimate_variants.py --budget quick --tasks effnet-fashion \\
        --optimizers estimate-tensor-max --seeds 3 --out benchmarks/results/estimate_variants

Not part of the library: weight decay, param-group multipliers other than the schedule's,
sharding and non-finite handling are left out.
"""
from __future__ import annotations

import math
import sys

import torch

from lrfree.bench import optimizers as registry

from _scaled_prototype import adam_moments, freeze_normaliser


class EstimateVariant(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 variant: str = "global", d0_lr: float = 1e-6, z: float = 2.0,
                 c: float = 0.5) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.variant, self.d0_lr, self.z, self.c = variant, d0_lr, z, c
        self.scalars = dict(d=0.0, r=0.0, N=None, G0=0.0, k=0, n=0)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        sc = self.scalars
        items = [(g, p) for g in self.param_groups if g["lr"] != 0 for p in g["params"]
                 if p.grad is not None]
        sc["k"] += 1
        k = sc["k"]
        betas = self.param_groups[0]["betas"]
        beta2 = betas[1]
        eps = self.param_groups[0]["eps"]
        a, direction = {}, {}
        for _, p in items:  # Adam's a_k and m_hat_k (spec §2)
            st = self.state[p]
            if "m" not in st:
                st.update(m=torch.zeros_like(p), v=torch.zeros_like(p),
                          s=torch.zeros_like(p), r=0.0, quad=0.0)
            a[p], direction[p] = adam_moments(st, p.grad, betas, eps, k)
        freeze_normaliser(sc, a, [p for _, p in items], self.d0_lr)
        norm = sc["N"]
        scaled = {p: p.grad * torch.sqrt(norm / a[p]) for _, p in items}
        sq = sum(float((scaled[p] ** 2).sum()) for _, p in items)
        if sc["G0"] == 0:
            sc["G0"] = math.sqrt(sq)
        lam = sc["d"] / sc["G0"] if sc["G0"] > 0 else 0.0
        if self.variant == "polyak-cap" and loss is not None and float(loss) > 0 and sq > 0:
            lam = min(lam, float(loss) / (self.c * sq))
        inflation = 1 / math.sqrt(1 - beta2 ** k) if self.variant == "inflated" else 1.0
        for group, p in items:  # r += lam <g', s>, s += lam g' (per tensor and in total)
            st = self.state[p]
            g = scaled[p] * inflation
            increment = lam * group["lr"] * float((g * st["s"]).sum())
            sc["r"] += increment
            st["r"] += increment
            st["quad"] += increment * increment
            st["s"].add_(g, alpha=lam * group["lr"])
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in items))
        d_hat = 2 * sc["r"] / s_norm if s_norm > 0 else 0.0
        if self.variant in ("tensor-max", "tensor-lcb"):
            per_element = d_hat / math.sqrt(sc["n"])
            for _, p in items:
                st = self.state[p]
                r_t = st["r"] - (self.z * math.sqrt(st["quad"])
                                 if self.variant == "tensor-lcb" else 0.0)
                s_t = float(st["s"].norm())
                if s_t > 0:
                    per_element = max(per_element, 2 * r_t / (s_t * math.sqrt(p.numel())))
            d_hat = per_element * math.sqrt(sc["n"])
        sc["d"] = max(sc["d"], d_hat)
        for group, p in items:  # x <- x - lam gamma N m_hat / a
            p.sub_(lam * group["lr"] * norm * direction[p] / a[p])
        for group in self.param_groups:
            group["effective_lr"] = lam * group["lr"] * norm
        return loss


VARIANTS = {"estimate-global": "global", "estimate-tensor-max": "tensor-max",
            "estimate-tensor-lcb": "tensor-lcb", "estimate-inflated": "inflated",
            "step-polyak-cap": "polyak-cap"}


def register() -> None:
    for name, variant in VARIANTS.items():
        registry._FIXED[name] = registry.OptimizerSpec(
            name, "ablation", lambda params, v=variant: EstimateVariant(params, variant=v),
            registry._group_effective_lr, pass_loss=True)


def check_global_matches_library() -> float:
    """Largest parameter difference between estimate-global and lrfree.PSDASGD at the
    prototype's settings (start 1e-6, the published unbounded growth; the library's
    defaults moved to 1e-4 and 1.5 after these runs, docs/algorithms.md §4e, §4g)."""
    import lrfree

    def train(make):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(),
                                  torch.nn.Linear(30, 5)).double()
        opt = make(net.parameters())
        x, y = torch.randn(64, 20, dtype=torch.float64), torch.randint(0, 5, (64,))
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach() for p in net.parameters()]

    return max(float((u - v).abs().max()) for u, v in
               zip(train(lambda ps: lrfree.PSDASGD(ps, d0_lr=1e-6, growth_rate=math.inf,
                                                    schedule_free=False)),
                   train(lambda ps: EstimateVariant(ps))))


if __name__ == "__main__":
    gap = check_global_matches_library()
    if gap > 1e-10:
        raise SystemExit(f"estimate-global differs from lrfree.PSDASGD by {gap:.2e}")
    register()
    from lrfree.bench.cli import main

    sys.exit(main(sys.argv[1:], program=("python", "benchmarks/estimate_variants.py")))
