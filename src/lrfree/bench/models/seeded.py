"""Build a model from a seed without touching the caller's global RNG state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def build_seeded(build: Callable[[], M], seed: int) -> M:
    """Call `build` with torch's global RNG seeded to `seed`, then restore the global RNG.

    Module initialisers only draw from the global RNG, so this is how "same seed => same
    initial weights" is guaranteed whatever ran before in the process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
