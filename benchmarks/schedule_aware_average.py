"""Research prototype (issue 17): an iterate average that a decaying schedule cannot hurt.

`average=True` weights iterate k by w_k = d_k^2 k^p (docs/algorithms.md §4b): the user's lr
multiplier gamma_k is left out. Without a schedule that average is what converges (noisy
least squares: relative distance 0.043 against 0.56 for the last iterate); under the
suite's cosine schedule it is worse than the last iterate, because it still holds iterates
from the large-step part of the run (logreg, full budget: 22.9x the best Adam's
suboptimality against 5.7x).

The variant divides the weight by gamma_k^q:

    w_k = d_k^2 k^p / gamma_k^q

A constant gamma changes nothing (the same average as now, so the no-schedule result
stands); under a schedule that decays to zero the weight moves onto the small-step iterates
at the end, and the average tends to the last iterate. gamma_k is the largest lr multiplier
of the param groups at step k.

    psdasgd-avg-q1, psdasgd-avg-q2   PSDASGD(average=True) with these weights, q = 1 and 2

Run through the benchmark CLI (the prototype replaces lrfree.averaging.update for the
process; the training path is untouched):

    python benchmarks/schedule_aware_average.py --budget full --tasks logreg \\
        --optimizers psdasgd-avg-q1,psdasgd-avg-q2 --seeds 0,1,2 --out OUT
"""
from __future__ import annotations

import sys

import torch

import lrfree
from lrfree import averaging
from lrfree.bench import optimizers as registry

_library_update = averaging.update
_current_gamma: list[float] = [1.0]
_power_q: list[float] = [0.0]


def _update(est, params, averages, scale, power):
    gamma = max(_current_gamma[0], 1e-30)
    return _library_update(est, params, averages, scale / gamma ** (_power_q[0] / 2), power)


class ScheduleAwareAverage(lrfree.PSDASGD):
    def __init__(self, params, q: float, **kwargs) -> None:
        super().__init__(params, average=True, **kwargs)
        self.q = q

    def step(self, closure=None, **kwargs):
        _current_gamma[0] = max(float(g["lr"]) for g in self.param_groups)
        _power_q[0] = self.q
        return super().step(closure, **kwargs)


def register() -> None:
    averaging.update = _update
    for q in (1, 2):
        registry._FIXED[f"psdasgd-avg-q{q}"] = registry.OptimizerSpec(
            f"psdasgd-avg-q{q}", "ablation",
            lambda params, q=q: ScheduleAwareAverage(params, q=float(q)),
            registry._group_effective_lr, pass_loss=True, train_eval=True)


if __name__ == "__main__":
    register()
    from lrfree.bench.cli import main

    sys.exit(main(sys.argv[1:], program=("python", "benchmarks/schedule_aware_average.py")))
