"""How fast each learning-rate estimate can grow: a linear objective, every gradient equal.

The most aligned gradient sequence there is, with the optimum infinitely far away, so the
estimate's growth is limited only by its own rule (docs/algorithms.md section 8). Prints,
and writes to benchmarks/results/linear_growth.md, the steps until the effective lr (Adam
units) first reaches 1e-3 and the growth factor per step between steps 10 and 20.

    python benchmarks/linear_growth.py
"""
from __future__ import annotations

import platform
from pathlib import Path

import dadaptation
import prodigyopt
import torch

import lrfree

OUT = Path(__file__).resolve().parent / "results" / "linear_growth.md"
CONFIGS = {
    # name: (factory, the group entry holding the effective lr in Adam units)
    "PSDASGD (default start, d0_lr = 1e-6)": (lambda p: lrfree.PSDASGD(p, schedule_free=False), "effective_lr"),
    "DAdaptAdam (lr = 1)": (lambda p: dadaptation.DAdaptAdam(p, lr=1.0), "d"),
    "DAdaptAdam, β2 = 0.9": (lambda p: dadaptation.DAdaptAdam(p, lr=1.0, betas=(0.9, 0.9)), "d"),
    "Prodigy (lr = 1)": (lambda p: prodigyopt.Prodigy(p, lr=1.0), "d"),
}


def trajectory(make, key: str, steps: int = 40, size: int = 1000) -> list[float]:
    g = torch.randn(size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(size, dtype=torch.float64))
    opt = make([p])
    out = []
    for _ in range(steps):
        p.grad = g.clone()
        opt.step()
        out.append(float(opt.param_groups[0][key]))
    return out


def main() -> None:
    lines = ["# Estimate growth on a linear objective", "",
             "Command: `python benchmarks/linear_growth.py`; float64, 1,000 elements, the same",
             f"gradient every step; torch {torch.__version__}, dadaptation "
             f"{dadaptation.__version__ if hasattr(dadaptation, '__version__') else '3.2'}, "
             f"{platform.machine()}. Deterministic (no seeds to vary).", "",
             "| method | steps to an lr of 1e-3 | growth per step (steps 10–20) |",
             "|---|---|---|"]
    for name, (make, key) in CONFIGS.items():
        lrs = trajectory(make, key)
        first = next((k + 1 for k, lr in enumerate(lrs) if lr >= 1e-3), None)
        growth = (lrs[20] / lrs[10]) ** 0.1
        lines.append(f"| {name} | {first} | {growth:.3f} |")
    lines += ["", "PS-DA-SGD's rate is √3 = 1.732 exactly (derived in docs/algorithms.md §8; "
              "tests/test_estimate_growth.py)."]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
