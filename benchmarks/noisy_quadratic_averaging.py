"""Iterate averaging without a schedule: the noisy quadratic of tests/test_averaging.py.

50 dimensions, curvatures 0.1..10, unit gradient noise, 3000 steps of PSDASGD(average=True)
at its defaults, lr multiplier held at 1.0. Relative distance to the optimum of the last
iterate and of the average, per seed (the start is at distance 1.0).

    python benchmarks/noisy_quadratic_averaging.py   # writes benchmarks/results/noisy_quadratic_averaging.{json,md}
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

import lrfree

SEEDS = (0, 1, 2)
STEPS = 3000


def run(seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    h = torch.logspace(-1, 1, 50, dtype=torch.float64)
    x_star = torch.randn(50, dtype=torch.float64, generator=g)
    x = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    opt = lrfree.PSDASGD([x], average=True)
    for _ in range(STEPS):
        x.grad = h * (x.detach() - x_star) + torch.randn(50, dtype=torch.float64, generator=g)
        opt.step()
    last = float((x.detach() - x_star).norm() / x_star.norm())
    with opt.averaged():
        average = float((x.detach() - x_star).norm() / x_star.norm())
    return {"last_iterate": last, "average": average,
            "effective_lr": float(opt.param_groups[0]["effective_lr"])}


def main() -> None:
    torch.set_num_threads(1)
    rows = {seed: run(seed) for seed in SEEDS}
    meta = {"command": "python benchmarks/noisy_quadratic_averaging.py", "steps": STEPS,
            "torch": torch.__version__, "lrfree": lrfree.__version__,
            "python": sys.version.split()[0], "machine": platform.platform()}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "noisy_quadratic_averaging.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| seed | last iterate | average | effective lr |", "|---|---|---|---|"]
    lines += [f"| {s} | {r['last_iterate']:.3f} | {r['average']:.3f} | {r['effective_lr']:.3g} |"
              for s, r in rows.items()]
    table = "\n".join(lines)
    (out / "noisy_quadratic_averaging.md").write_text(
        f"Relative distance to the optimum after {STEPS} steps (start: 1.0).\n"
        f"Command: `{meta['command']}`; torch {meta['torch']}; {meta['machine']}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
