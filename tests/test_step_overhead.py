"""The number of aten calls of one steady-state eager step (issue 16: on a small model, and a
small model on a GPU, the step is bound by per-call host cost, not memory).

Counts are deterministic where timings are not: a change that brings back kernels per step
(a sum of one part, a multiply by lr = 1, a check done in many small kernels) fails here.
The bounds are the counts of the 64-64-10 MLP of benchmarks/small_model_overhead.py (4
tensors, one group) when they were set; lower them when a change removes calls.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lrfree
from problems import optimizer_class

# (optimizer, options, aten calls per step at most)
# (PSDASGD: +2 since issue 17's default growth_rate = 1.5, the bound min(d_hat, 1.5 d))
BOUNDS = [
    ("PSDASGD", {}, 83),
    ("PSDASGD", {"nonfinite": "unchecked"}, 74),
    ("PSSPS", {}, 68),
]


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def _calls_per_step(name: str, options: dict) -> list[str]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt = optimizer_class(name)(net.parameters(), **options)
    loss = torch.tensor(1.0)
    for _ in range(3):  # past the first step (which fixes N and creates the state)
        opt.step(loss=loss)
    with _Count() as count:
        opt.step(loss=loss)
    return count.calls


@pytest.mark.parametrize("name,options,bound", BOUNDS, ids=[f"{n}-{o}" for n, o, _ in BOUNDS])
def test_aten_calls_per_step(name, options, bound):
    calls = _calls_per_step(name, options)
    assert len(calls) <= bound, (
        f"{name}({options}) made {len(calls)} aten calls in a steady-state step, more than "
        f"{bound}: {sorted(set(calls))}")
