"""DoG, "distance over gradients" (Ivgi, Hinder & Carmon 2023).

    eta_k = rbar_k / sqrt(sum_{i<=k} ||g_i||^2),   rbar_k = max(r_eps, max_{i<=k} ||x_i - x_0||)

with ``r_eps = reps_rel * (1 + ||x_0||)``: the step is the distance travelled so far over the
accumulated gradient norm, so it grows from a tiny value while the iterates move away from
the start and settles once they stop. Run in the scaled space by PS-DoG, the norms are
those of the scaled gradient and the scaled displacement.
"""
from __future__ import annotations

import torch
from torch import Tensor


class DoGStep:
    """Scalars of DoG as 0-d tensors: ``rbar``, ``sum_sq_grad``, ``r_eps``, ``eta``, ``step``."""

    @staticmethod
    def initial(device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zero = torch.zeros((), device=device, dtype=dtype)
        return {"rbar": zero.clone(), "sum_sq_grad": zero.clone(), "r_eps": zero.clone(),
                "eta": zero.clone(), "step": zero.clone()}

    @staticmethod
    def update(est: dict[str, Tensor], sq_dist: Tensor, sq_norm_g: Tensor) -> Tensor:
        """Advance with this step's squared distance from x_0 and squared gradient norm."""
        est["rbar"] = torch.maximum(torch.maximum(est["rbar"], torch.sqrt(sq_dist)), est["r_eps"])
        est["sum_sq_grad"] = est["sum_sq_grad"] + sq_norm_g
        total = est["sum_sq_grad"]
        est["eta"] = torch.where(total > 0, est["rbar"] / torch.sqrt(total), torch.zeros_like(total))
        est["step"] = est["step"] + 1
        return est["eta"]
