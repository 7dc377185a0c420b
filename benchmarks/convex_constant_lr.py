"""What PSDASGD does on a deterministic convex problem without a schedule.

Full-batch L2-regularised logistic regression on the scikit-learn digits (float64, the
problem of tests/test_convex_battery.py with all 1797 images), lr multiplier 1.0 held
constant: suboptimality after 500 and 2000 steps for the adam and amsgrad scalings and for
d_coef = 0.5, and the effective lr the estimate settled at. Deterministic: no seeds.

    python benchmarks/convex_constant_lr.py   # writes benchmarks/results/convex_constant_lr.{json,md}
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits

import lrfree

CONFIGS = {
    "adam": {},
    "amsgrad": {"scaling": "amsgrad"},
    "adam, d_coef=0.5": {"d_coef": 0.5},
    "adam, average=True": {"average": True},
}
CHECKPOINTS = (100, 500, 2000)


def problem():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y = torch.tensor(y)

    def loss(w):
        return torch.nn.functional.cross_entropy(x @ w, y) + 0.5e-2 * (w ** 2).sum()

    w = torch.zeros(x.shape[1], 10, dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w], lr=1, max_iter=5000, tolerance_grad=1e-10, tolerance_change=0,
                              history_size=50, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        value = loss(w)
        value.backward()
        return value

    lbfgs.step(closure)
    return loss, x.shape[1], float(loss(w.detach()))


def main() -> None:
    torch.set_num_threads(1)
    loss, dim, f_star = problem()
    rows = {}
    for name, options in CONFIGS.items():
        w = torch.zeros(dim, 10, dtype=torch.float64, requires_grad=True)
        opt = lrfree.PSDASGD([w], **{"schedule_free": False, **options})  # the momentum step
        rows[name] = {}
        for step in range(1, max(CHECKPOINTS) + 1):
            opt.zero_grad()
            loss(w).backward()
            opt.step()
            if step in CHECKPOINTS:
                with opt.averaged():
                    gap = float(loss(w.detach())) - f_star
                rows[name][step] = {"suboptimality": gap,
                                    "effective_lr": float(opt.param_groups[0]["effective_lr"])}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    meta = {"command": "python benchmarks/convex_constant_lr.py", "f_star": f_star,
            "torch": torch.__version__, "lrfree": lrfree.__version__,
            "python": sys.version.split()[0], "machine": platform.platform()}
    (out / "convex_constant_lr.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| PSDASGD | " + " | ".join(f"{s} steps" for s in CHECKPOINTS) + " | effective lr |",
             "|---|" + "---|" * (len(CHECKPOINTS) + 1)]
    for name, by_step in rows.items():
        cells = [f"{by_step[s]['suboptimality']:.2g}" for s in CHECKPOINTS]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {by_step[max(CHECKPOINTS)]['effective_lr']:.3g} |")
    table = "\n".join(lines)
    (out / "convex_constant_lr.md").write_text(
        f"Suboptimality f(x) - f* (f* = {f_star:.6f}); averaged runs evaluated at the average.\n"
        f"Command: `{meta['command']}`; torch {meta['torch']}; {meta['machine']}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
