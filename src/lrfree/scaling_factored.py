"""The "adafactor" scaling: Adam's a_k with a factored second moment (Shazeer & Stern 2018).

A parameter with two or more dimensions is viewed as the matrix ``(rows, cols) =
(shape[0], prod(shape[1:]))`` (a Linear weight as it is; a conv kernel as ``out_channels x
fan_in``). Instead of the full EMA ``v`` of ``g^2`` it keeps EMAs of the row means and the
column means of ``g^2``, and reconstructs the rank-one estimate

    r_k = beta2 r_{k-1} + (1 - beta2) mean_cols(g_k^2)       (rows values)
    c_k = beta2 c_{k-1} + (1 - beta2) mean_rows(g_k^2)       (cols values)
    v_hat_k = (r_k c_k^T / mean(r_k)) / (1 - beta2^k)        a_k = sqrt(v_hat_k) + eps

(``mean(r) = mean(c)`` = the mean of the EMA of ``g^2``, so this is Adafactor's
``R C^T / sum(R)`` in means). It is exact whenever the EMA of ``g^2`` has rank one, and
costs ``rows + cols`` numbers instead of ``rows * cols``. A matrix that has seen only zero
gradients has ``mean(r) = 0``; its ``v_hat`` is 0 (as Adam's would be), not 0 / 0.
Parameters with fewer than two dimensions keep Adam's full ``v``.

State: every parameter carries the same three keys, so a bucket of mixed shapes keeps one
list per key: ``v`` (the full EMA; 0-d and unused for a factored parameter), ``v_row`` and
``v_col`` (the factored EMAs; 0-d and unused for a parameter with fewer than two dimensions).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

STATE_NAMES = ("v", "v_row", "v_col")


def is_factored(shape: torch.Size) -> bool:
    return len(shape) >= 2


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """(rows, cols) of the matrix a parameter of ``shape`` is factored as."""
    return shape[0], math.prod(shape[1:])


def state_shape(name: str, shape: torch.Size) -> torch.Size:
    """The shape of state ``name`` for a parameter of ``shape`` (``()``: unused); the
    states of other parts of the optimizer (``m``, ``s``...) are shaped like the parameter."""
    if name not in STATE_NAMES:
        return shape
    factored = is_factored(shape)
    if name == "v":
        return torch.Size(()) if factored else shape
    if not factored:
        return torch.Size(())
    rows, cols = matrix_shape(shape)
    return torch.Size((rows,) if name == "v_row" else (cols,))


def second_moment(v_row: Tensor, v_col: Tensor, bias: Tensor) -> Tensor:
    """v_hat = r c^T / mean(r) / bias as a (rows, cols) matrix; 0 where mean(r) = 0."""
    mean = v_row.mean()
    ratio = torch.where(mean > 0, v_row / mean, torch.zeros_like(v_row))
    return torch.outer(ratio, v_col) / bias


def denominators(states: dict[str, list[Tensor]], grads: list[Tensor], steps: list[Tensor],
                 beta2: float, eps: float) -> list[Tensor]:
    """Update the statistics with this step's gradients and return new tensors ``a_k``.

    Parameters with fewer than two dimensions go through Adam's multi-tensor update
    together; each factored one is updated on its own (its row and column means are
    per-tensor reductions).
    """
    full = [i for i, g in enumerate(grads) if not is_factored(g.shape)]
    factored = [i for i, g in enumerate(grads) if is_factored(g.shape)]
    a: list[Tensor] = list(grads)  # placeholders: every entry is replaced below
    if full:
        v = [states["v"][i] for i in full]
        g = [grads[i] for i in full]
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - beta2)
        bias = torch._foreach_pow(beta2, [steps[i] for i in full])
        torch._foreach_neg_(bias)
        torch._foreach_add_(bias, 1.0)
        for i, root in zip(full, torch._foreach_sqrt(torch._foreach_div(v, bias))):
            a[i] = root
    for i in factored:
        g = grads[i]
        if g.numel() == 0:  # an empty shard: nothing to average over
            a[i] = torch.empty_like(g)
            continue
        square = (g * g).reshape(matrix_shape(g.shape))
        v_row, v_col = states["v_row"][i], states["v_col"][i]
        v_row.lerp_(square.mean(1), 1.0 - beta2)
        v_col.lerp_(square.mean(0), 1.0 - beta2)
        v_hat = second_moment(v_row, v_col, 1.0 - torch.pow(beta2, steps[i]))
        a[i] = torch.sqrt(v_hat).reshape(g.shape)
    torch._foreach_add_(a, eps)
    return a
