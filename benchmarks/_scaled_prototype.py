"""Shared pieces of the PS-DA-SGD research prototypes (estimate_variants.py, step_overshoot.py).

Both are PS-DA-SGD in the spec's notation (ALGORITHMS.md §2–§4), one tensor at a time; these
are the two steps they share unchanged: Adam's moments, and the normaliser N frozen at the
first step with the start d_1 = d0_lr sqrt(n).
"""
from __future__ import annotations

import math

import torch


def adam_moments(state: dict, grad: torch.Tensor, betas: tuple[float, float], eps: float,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Update m and v in `state` with `grad`; return Adam's a_k = sqrt(v_hat) + eps and m_hat."""
    beta1, beta2 = betas
    state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
    state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    a = (state["v"] / (1 - beta2 ** k)).sqrt() + eps
    return a, state["m"] / (1 - beta1 ** k)


def freeze_normaliser(scalars: dict, a: dict, params: list, d0_lr: float) -> None:
    """At the first step: N = mean of a_1 over the live elements, n their count, d_1."""
    if scalars["N"] is not None:
        return
    live = [a[p][p.grad != 0] for p in params]
    scalars["n"] = sum(t.numel() for t in live)
    scalars["N"] = sum(float(t.sum()) for t in live) / max(scalars["n"], 1)
    scalars["d"] = d0_lr * math.sqrt(max(scalars["n"], 1))


def scaled_gradients(scalars: dict, a: dict, params: list, d0_lr: float
                     ) -> tuple[float, dict]:
    """N (frozen at the first step, with the start), g' = g sqrt(N / a) per parameter, and
    G0 = ||g'_1|| fixed at the first step; returns (N, g')."""
    freeze_normaliser(scalars, a, params, d0_lr)
    norm = scalars["N"]
    scaled = {p: p.grad * torch.sqrt(norm / a[p]) for p in params}
    if scalars["G0"] == 0:
        scalars["G0"] = math.sqrt(sum(float((scaled[p] ** 2).sum()) for p in params))
    return norm, scaled
