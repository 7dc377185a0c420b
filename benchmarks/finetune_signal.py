"""Where D-Adaptation's sum s holds signal on a short fine-tune (issue 17, docs/algorithms.md §4e).

PS-DA-SGD's estimate is d_hat = 2 r / ||s||, with s the sum of the steps' scaled gradients
lambda g'. Over k steps, if a tensor's g' were pure noise, ||s_p||^2 would be about the sum
of its steps' squared norms, sum_k ||lambda g'_k,p||^2 (ratio 1); if every step pointed the
same way, k times that. This script fine-tunes with PSDASGD at its defaults, records each
parameter tensor's step lambda g' (the change of its s) at every step, and prints per
group of tensors: the ratio ||s_p||^2 / sum_k ||lambda g'_k,p||^2 (signal: > 1) and its share
of ||s||^2. A share held by tensors with ratio near 1 is noise that the denominator counts
and the numerator does not.

    python benchmarks/finetune_signal.py [effnet-fashion|minilm-wordnet] [seed]
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

import lrfree
from lrfree.bench.tasks import get_task
from lrfree.bench.tasks.base import TrainLog

OUT = Path(__file__).resolve().parent / "results" / "finetune_signal.md"
HEADER = ("# Where D-Adaptation's sum holds signal on a short fine-tune\n\n"
          "Each section: `python benchmarks/finetune_signal.py TASK SEED` (appends here); "
          "torch {torch}, one thread, CPU. Deterministic for a task and seed.\n\n")


class RecordingHandle:
    """A PSDASGD with the cosine schedule of the suite, recording the change of s per step."""

    def __init__(self, params, total_steps: int) -> None:
        self.params = list(params)
        self.optimizer = lrfree.PSDASGD(self.params)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        self.step_sq = defaultdict(float)  # parameter index -> sum_k ||lambda g'_k||^2

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self, loss: torch.Tensor) -> None:
        before = [self.optimizer.state[p]["s"].clone() if "s" in self.optimizer.state[p]
                  else None for p in self.params]
        self.optimizer.step()
        self.schedule.step()
        for i, p in enumerate(self.params):
            s = self.optimizer.state[p]["s"].float()
            change = s if before[i] is None else s - before[i].float()
            self.step_sq[i] += float(change.pow(2).sum())

    def train(self) -> None:
        pass

    def eval(self) -> None:
        pass

    def effective_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["effective_lr"])


def main() -> None:
    task_name = sys.argv[1] if len(sys.argv) > 1 else "effnet-fashion"
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    torch.set_num_threads(1)
    task = get_task(task_name)
    handles: list[RecordingHandle] = []

    def factory(params, total_steps):
        handles.append(RecordingHandle(params, total_steps))
        return handles[-1]

    metric = task.run(factory, seed, "quick", TrainLog(log_every=8))
    handle = handles[0]
    opt = handle.optimizer
    group = opt.param_groups[0]
    rows = defaultdict(lambda: [0.0, 0.0, 0])  # ||s||^2, sum of step norms^2, numel
    shapes = [tuple(p.shape) for p in handle.params]
    # the new head is the last two tensors (weight, bias) in both tasks' parameter lists
    labels = ["new head" if i >= len(handle.params) - 2 else
              ("1-d pretrained (norms, biases)" if len(shapes[i]) == 1 else
               "pretrained weight matrices / kernels") for i in range(len(handle.params))]
    for i, p in enumerate(handle.params):
        s = opt.state[p]["s"].float()
        row = rows[labels[i]]
        row[0] += float(s.pow(2).sum())
        row[1] += handle.step_sq[i]
        row[2] += p.numel()
    total_s = sum(r[0] for r in rows.values())
    lines = [f"## {task_name}, seed {seed}, quick budget, PSDASGD defaults",
             "", f"final metric {metric:.4f}; d = {float(group['d']):.3g}, d_hat = "
             f"{float(group['d_hat']):.3g}, last effective lr {float(group['effective_lr']):.3g}",
             "", "| tensors | elements | ||s||² share | ||s||² / Σ‖λg'‖² (1: noise) |",
             "|---|---|---|---|"]
    for label, (sq_s, sq_steps, numel) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        ratio = sq_s / sq_steps if sq_steps > 0 else float("nan")
        lines.append(f"| {label} | {numel:,} | {sq_s / total_s:.3f} | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not OUT.exists():
        OUT.write_text(HEADER.format(torch=torch.__version__), encoding="utf-8")
    with OUT.open("a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
