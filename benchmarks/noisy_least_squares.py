"""Constant-lr noisy least squares (issue 17's third target): does the method converge
without a schedule?

A fixed 200 x 50 design A (Gaussian rows), targets b = A x_true + noise (std 1), the
least-squares solution x_ls; mini-batches of 16 rows drawn with replacement, 3000 steps,
the optimizer's lr left at its default and never scheduled, x_0 = 0. Reported: the relative
distance ||x_K - x_ls|| / ||x_0 - x_ls|| of the iterate the method exports (the average for
`average=True`, via opt.eval()), mean and spread over seeds; 0.1 is the issue's bar.

    python benchmarks/noisy_least_squares.py                  # every configuration below
    python benchmarks/noisy_least_squares.py psdasgd adam@1e-2  # a subset

Writes benchmarks/results/noisy_least_squares.{json,md}.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import lrfree

ROWS, DIM, BATCH, STEPS, SEEDS = 200, 50, 16, 3000, (0, 1, 2)

CONFIGS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    # the defaults: schedule_free="auto", the schedule-free iteration without a scheduler
    "psdasgd (defaults)": lambda p: lrfree.PSDASGD(p),
    # the momentum step (the default before "auto"), its averaging and its ablations
    "psdasgd schedule_free=False": lambda p: lrfree.PSDASGD(p, schedule_free=False),
    "psdasgd average=True": lambda p: lrfree.PSDASGD(p, average=True),
    "psdasgd schedule_free=True": lambda p: lrfree.PSDASGD(p, schedule_free=True),
    "psdasgd schedule_free=False growth_rate=inf":
        lambda p: lrfree.PSDASGD(p, schedule_free=False, growth_rate=float("inf")),
    "psdasgd schedule_free=False d0_lr=1e-6":
        lambda p: lrfree.PSDASGD(p, schedule_free=False, d0_lr=1e-6),
    "psdasgd d0_lr=1e-6 average=True": lambda p: lrfree.PSDASGD(p, d0_lr=1e-6, average=True),
    "pssps": lambda p: lrfree.PSSPS(p),
    **{f"adam@{lr:g}": (lambda lr: lambda p: torch.optim.Adam(p, lr=lr))(lr)
       for lr in (1e-3, 3e-3, 1e-2, 3e-2)},
}


def problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(ROWS, DIM, dtype=torch.float64, generator=g)
    b = a @ torch.randn(DIM, dtype=torch.float64, generator=g) \
        + torch.randn(ROWS, dtype=torch.float64, generator=g)
    x_ls = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return a, b, x_ls


def run(make: Callable, seed: int) -> float:
    a, b, x_ls = problem(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.nn.Parameter(torch.zeros(DIM, dtype=torch.float64))
    opt = make([x])
    for _ in range(STEPS):
        rows = torch.randint(0, ROWS, (BATCH,), generator=g)
        opt.zero_grad()
        loss = 0.5 * ((a[rows] @ x - b[rows]) ** 2).mean()
        loss.backward()
        if getattr(opt, "needs_loss", False) or isinstance(opt, (lrfree.PSSPS,)):
            opt.step(loss=loss.detach())
        else:
            opt.step()
    if hasattr(opt, "eval"):
        opt.eval()
    return float((x.detach() - x_ls).norm() / x_ls.norm())


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    rows = {name: [run(CONFIGS[name], s) for s in SEEDS] for name in (names or CONFIGS)}
    meta = {"command": "python benchmarks/noisy_least_squares.py " + " ".join(names),
            "rows": ROWS, "dim": DIM, "batch": BATCH, "steps": STEPS, "seeds": list(SEEDS),
            "torch": torch.__version__, "lrfree": lrfree.__version__,
            "python": sys.version.split()[0], "machine": platform.platform()}
    lines = ["| configuration | mean | std | per seed |", "|---|---|---|---|"]
    for name, values in rows.items():
        lines.append(f"| {name} | {statistics.mean(values):.3g} | "
                     f"{statistics.stdev(values):.2g} | "
                     + ", ".join(f"{v:.3g}" for v in values) + " |")
    table = "\n".join(lines)
    print(table)
    if names:  # a subset: print only, keep the committed full table
        return
    out = Path(__file__).parent / "results"
    (out / "noisy_least_squares.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                             indent=1))
    (out / "noisy_least_squares.md").write_text(
        f"Relative distance to the least-squares solution after {STEPS} steps at a constant "
        f"lr ({ROWS}x{DIM}, batch {BATCH}, start 1.0; bar: 0.1).\n"
        f"Command: `{meta['command'].strip()}`; torch {meta['torch']}; {meta['machine']}.\n\n"
        f"{table}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
