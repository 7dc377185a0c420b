"""Pieces the reference optimizers share: the alpha rules and the adaptive update, per tensor."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from lrfree.reference._factored import factored_denominator


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
    if scaling == "adafactor":
        return factored_denominator(state, g, k, beta2, eps)
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


def scaled_space_inputs(optimizer: torch.optim.Optimizer, items: list, scaling: str,
                        rule_state: tuple[str, ...] = (), momentum: bool = True
                        ) -> tuple[dict, dict, dict]:
    """Per parameter: count its step, add coupled decay, update m and v.

    Returns (a_k, g_k, m_hat_k) keyed by parameter (spec section 2); ``momentum=False``
    (schedule-free) keeps no m and returns g_k as the direction.
    """
    a, grads, direction = {}, {}, {}
    for group, p in items:
        beta1, beta2 = group["betas"]
        state = optimizer.state[p]
        # adafactor creates its own statistics (their shapes depend on the parameter's)
        names = ("m",) * (beta1 > 0 and momentum) + {"none": (), "amsgrad": ("v", "v_max"),
                                        "adafactor": ()}.get(
            scaling, ("v",)) + rule_state
        init_state(state, p, names)
        state["step"] += 1
        g = p.grad.clone()
        if group["weight_decay"] and not group["decouple"]:
            g = g + group["weight_decay"] * p
        grads[p] = g
        direction[p] = momentum_direction(state, g, state["step"], beta1 if momentum else 0.0)
        a[p] = alpha_denominator(state, g, state["step"], scaling, beta2, group["eps"])
    return a, grads, direction


def normaliser(scalars: dict, a: dict, grads: dict, items: list, scaling: str,
               alpha_norm: str) -> float:
    """N (spec section 3): 1, the running mean, or the mean frozen at the first step."""
    if scaling == "none" or alpha_norm == "none":
        n = 1.0
    elif alpha_norm == "running" or scalars["N0"] is None:
        n = mean_over_live(a, grads, items)
    else:
        n = scalars["N0"]
    if scalars["N0"] is None or alpha_norm == "running":
        scalars["N0"] = n
    return n
