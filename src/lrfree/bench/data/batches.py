"""Minibatch order: epochs of seeded permutations, independent of the optimizer."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches; each epoch is a fresh permutation, the tail dropped.

    Dropping the last partial batch keeps every step's batch size equal, which matters for
    step-size rules that look at the loss value.
    """
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
