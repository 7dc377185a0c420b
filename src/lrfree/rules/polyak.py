"""The stochastic Polyak step (Loizou et al. 2021) with a smoothly growing cap.

    eta_P = max(loss - f_star, 0) / (c * ||g||^2 + eps)
    eta_k = min(eta_P, cap_k)
    cap_{k+1} = cap_growth * max(eta_k, floor)

SPS_max's smoothing caps each step at a constant times the previous one. Two guards the
published rule lacks: the first cap is ``cap_start`` times the first positive Polyak step
(an uncapped first step can kill a network), and ``floor`` (that first cap) keeps the cap
from locking at 0 once a step is 0 (the loss reached ``f_star``). Both scale with the
Polyak step itself, so rescaling the loss or the parameters leaves every step unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor


class PolyakStep:
    """Scalars of the capped Polyak rule as a dict of 0-d tensors.

    Keys: ``eta`` (the last step), ``cap`` (bound for the next step; 0 until the first
    positive Polyak step), ``floor`` (the first cap), ``step`` (global step count).
    """

    @staticmethod
    def initial(device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zero = torch.zeros((), device=device, dtype=dtype)
        return {"eta": zero.clone(), "cap": zero.clone(), "floor": zero.clone(),
                "step": zero.clone()}

    @staticmethod
    def update(
        est: dict[str, Tensor],
        loss: Tensor,
        sq_norm_g: Tensor,
        f_star: float,
        c: float,
        eps: float,
        cap_start: float,
        cap_growth: float,
    ) -> Tensor:
        """Return this step's eta and advance the cap."""
        # a zero gradient says nothing about the step size: no step, and it must not become
        # the cap's floor (loss / delta is ~1e8x too large; with delta = 0 it is inf)
        informative = sq_norm_g > 0
        gap = loss - f_star if f_star != 0 else loss  # x - 0.0 is x, -0.0 included
        eta_polyak = torch.where(informative,
                                 torch.clamp(gap, min=0.0) / ((c * sq_norm_g if c != 1 else sq_norm_g) + eps),
                                 informative)  # False promotes to 0.0: no zeros kernel
        floor = torch.where(est["floor"] > 0, est["floor"], cap_start * eta_polyak)
        cap = torch.where(est["cap"] > 0, est["cap"], floor)
        eta = torch.minimum(eta_polyak, cap)
        est["floor"] = floor
        est["cap"] = cap_growth * torch.maximum(eta, floor)
        est["eta"] = eta
        est["step"] = est["step"] + 1
        return eta
