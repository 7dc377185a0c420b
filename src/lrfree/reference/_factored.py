"""The "adafactor" alpha rule in the spec's notation, one tensor at a time.

A tensor with two or more dimensions is the matrix G of shape (shape[0], rest); the rule
keeps EMAs R of its row means and C of its column means of g^2 and uses
v_hat = R C^T / mean(R) / (1 - beta2^k); other tensors keep Adam's v.
"""
from __future__ import annotations

import torch
from torch import Tensor


def factored_denominator(state: dict, g: Tensor, k: int, beta2: float, eps: float) -> Tensor:
    """Update the statistics with g and return a_k; creates them at the first call."""
    if g.dim() < 2:
        state.setdefault("v", torch.zeros_like(g))
        state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
        return torch.sqrt(state["v"] / (1 - beta2 ** k)) + eps
    square = (g * g).reshape(g.shape[0], -1)
    rows, cols = square.shape
    state.setdefault("v_row", torch.zeros(rows, dtype=g.dtype, device=g.device))
    state.setdefault("v_col", torch.zeros(cols, dtype=g.dtype, device=g.device))
    state["v_row"] = beta2 * state["v_row"] + (1 - beta2) * square.sum(1) / cols
    state["v_col"] = beta2 * state["v_col"] + (1 - beta2) * square.sum(0) / rows
    r_hat = state["v_row"] / (1 - beta2 ** k)
    c_hat = state["v_col"] / (1 - beta2 ** k)
    r_mean = float(r_hat.sum()) / rows
    if r_mean == 0:  # no gradient in this matrix yet: v_hat = 0, as Adam's would be
        v_hat = torch.zeros(rows, cols, dtype=g.dtype, device=g.device)
    else:
        v_hat = r_hat[:, None] * c_hat[None, :] / r_mean
    return torch.sqrt(v_hat).reshape(g.shape) + eps
