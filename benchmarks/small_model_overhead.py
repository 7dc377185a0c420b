"""Per-step overhead on a small model (where per-call cost, not memory, bounds the step).

A 64-64-10 MLP (4 tensors, 4.8k parameters), fixed gradients, one thread; each optimizer
takes 5 untimed steps then 300 timed ones, in 3 interleaved rounds. Prints, and writes to
benchmarks/results/small_model_overhead.md, the median microseconds per step and the ratio
to AdamW(foreach) of the same round.

    python benchmarks/small_model_overhead.py
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

import lrfree

OUT = Path(__file__).resolve().parent / "results" / "small_model_overhead.md"
STEPS, ROUNDS = 300, 3


def factories() -> dict:
    out = {
        "AdamW (foreach)": (lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True), False),
        "AdamW (fused)": (lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True), False),
        "PSDASGD (eager)": (lambda p: lrfree.PSDASGD(p, schedule_free=False), True),
        "PSSPS (eager)": (lambda p: lrfree.PSSPS(p), True),
        "PSDASGD (eager, unchecked)": (lambda p: lrfree.PSDASGD(p, nonfinite="unchecked",
                                                              schedule_free=False), True),
    }
    try:
        lrfree.kernels.load()
        out["PSDASGD (cpp)"] = (lambda p: lrfree.fused(lrfree.PSDASGD(p, schedule_free=False),
                                                       kernel="cpp"), True)
        out["PSSPS (cpp)"] = (lambda p: lrfree.fused(lrfree.PSSPS(p), kernel="cpp"), True)
    except RuntimeError as error:
        print(f"skipping the (cpp) rows: {error}")
    return out


def build(make):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    return make(net.parameters())


def time_steps(opt, with_loss: bool, steps: int) -> float:
    loss = torch.tensor(1.0)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step(loss=loss) if with_loss else opt.step()
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    import lrfree.kernels  # noqa: F401  (the cpp rows)

    torch.set_num_threads(1)
    opts = {}
    for label, (make, with_loss) in factories().items():
        opts[label] = (build(make), with_loss)
        time_steps(*opts[label], 5)
    times = {label: [] for label in opts}
    labels = list(opts)
    for r in range(ROUNDS):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            times[label].append(time_steps(*opts[label], STEPS))
    ref = times["AdamW (foreach)"]
    lines = ["# Per-step overhead on a small model", "",
             "Command: `python benchmarks/small_model_overhead.py`; 64-64-10 MLP (4 tensors, "
             f"4.8k parameters), one thread, {ROUNDS} interleaved rounds of {STEPS} steps; "
             f"torch {torch.__version__}, {platform.machine()}, shared 2-core machine.", "",
             "| optimizer | µs per step (median) | / AdamW (foreach), median [min–max] |",
             "|---|---|---|"]
    for label in labels:
        ratios = [t / t_ref for t, t_ref in zip(times[label], ref)]
        lines.append(f"| {label} | {statistics.median(times[label]):.0f} | "
                     f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] |")
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
