"""The grid-edge rule: a hand-tuned sweep whose best lr sits at the edge of its grid is
not tuned, so the suite extends it, one half-decade at a time, until the best is inside.

The grid is the 1-3-10 sequence the registered sweeps use (…, 1e-3, 3e-3, 1e-2, …): the
step beyond the edge is the next point of that sequence (×3 or ×10/3).
"""
from __future__ import annotations

import math

from lrfree.bench.results import TaskResults

# Beyond these an lr is not a plausible optimum for any task here; the report then says
# the sweep is still at its edge.
LR_RANGE = (1e-7, 10.0)
MAX_EXTENSIONS = 4  # per family and task; each one costs a run per seed
# record family -> the optimizer name prefix of its members
SWEPT = {"adam": "adam", "adam-avg": "adam-avg", "sgd": "sgdm"}


def format_lr(lr: float) -> str:
    """`0.003` -> `3e-3`, `1.0` -> `1`: the spelling of the registered sweep names."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = round(lr / 10**exponent, 6)
    text = f"{mantissa:g}"
    return text if exponent == 0 else f"{text}e{exponent}"


def next_lr(lr: float, direction: int) -> float:
    """The next point of the 1-3-10 grid above (`direction` 1) or below (-1) `lr`."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 or -1, got {direction!r}")
    exponent = math.floor(math.log10(lr) + 1e-9)
    points = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 3)]
    if direction > 0:
        return min(p for p in points if p > lr * (1 + 1e-9))
    return max(p for p in points if p < lr * (1 - 1e-9))


def edge(task: TaskResults, family: str) -> int:
    """1 when the best member of the sweep is its largest lr, -1 when the smallest, else 0
    (also 0 for a sweep of fewer than two lrs: it has no inside)."""
    members = [r for r in task.sweep(family) if r.lr is not None]
    best = task.best_of(family)
    if len(members) < 2 or best is None or best.lr is None:
        return 0
    lrs = sorted(r.lr for r in members)
    if best.lr == lrs[-1]:
        return 1
    if best.lr == lrs[0]:
        return -1
    return 0


def extension(task: TaskResults, family: str) -> str | None:
    """The sweep member to run next under the grid-edge rule, or None when the best lr is
    inside the grid, the extension budget is spent or the next lr is out of range."""
    direction = edge(task, family)
    if direction == 0:
        return None
    if sum(r.extended() for r in task.sweep(family)) >= MAX_EXTENSIONS:
        return None
    lrs = [r.lr for r in task.sweep(family) if r.lr is not None]
    lr = next_lr(max(lrs) if direction > 0 else min(lrs), direction)
    if not LR_RANGE[0] <= lr <= LR_RANGE[1]:
        return None
    return f"{SWEPT[family]}@{format_lr(lr)}"
