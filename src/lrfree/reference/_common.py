"""Pieces the reference optimizers share: the alpha rules and the adaptive update, per tensor."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def active_params(optimizer: torch.optim.Optimizer):
    """(group, p) for every parameter with a gradient in a group with lr > 0."""
    for group in optimizer.param_groups:
        if group["lr"] == 0:
            continue
        for p in group["params"]:
            if p.grad is not None:
                yield group, p


def alpha_denominator(state: dict, g: Tensor, k: int, scaling: str, beta2: float,
                      eps: float) -> Tensor | None:
    """Update v (and v_max) with g and return a_k (spec section 2); None for "none"."""
    if scaling == "none":
        return None
    if scaling == "adagrad":
        state["v"] = state["v"] + g * g
        return torch.sqrt(state["v"]) + eps
    state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
    if scaling == "rmsprop":
        return torch.sqrt(state["v"]) + eps
    v_hat = state["v"] / (1 - beta2 ** k)
    if scaling == "amsgrad":
        state["v_max"] = torch.maximum(state["v_max"], v_hat)
        v_hat = state["v_max"]
    return torch.sqrt(v_hat) + eps


def momentum_direction(state: dict, g: Tensor, k: int, beta1: float) -> Tensor:
    """m_hat_k (bias-corrected EMA of g), or g itself when beta1 = 0."""
    if beta1 == 0:
        return g
    state["m"] = beta1 * state["m"] + (1 - beta1) * g
    return state["m"] / (1 - beta1 ** k)


def init_state(state: dict, p: Tensor, names: tuple[str, ...]) -> None:
    if "step" not in state:
        state["step"] = 0
        for name in names:
            state[name] = torch.zeros_like(p)


def loss_value(loss) -> float:
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError("reference optimizers take finite losses only")
    return value


def mean_over_live(a: dict, grads: dict, items) -> float:
    """Mean of a over the elements whose gradient is not zero (all elements if none is)."""
    live = [(a[p][grads[p] != 0]) for _, p in items]
    count = sum(t.numel() for t in live)
    if count == 0:
        return sum(float(a[p].sum()) for _, p in items) / sum(a[p].numel() for _, p in items)
    return sum(float(t.sum()) for t in live) / count
