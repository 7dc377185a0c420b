"""D-Adaptation (Defazio & Mishchenko 2023): a lower bound on the distance to the solution.

With the step ``lambda_k = d_k * gamma / G0`` and the weighted gradient sum
``s_k = s_{k-1} + lambda_k * gamma * g_k``, the numerator ``r_k = r_{k-1} + lambda_k *
<gamma * g_k, s_{k-1}>`` gives ``d_hat = 2 r_k / ||s_k||`` , a lower bound on
``||x_0 - x*||`` for convex problems, and ``d`` only ever grows towards it.

Everything is computed from three sums of one pass over the tensors, taken *before* ``s``
is updated:

    A = sum_g gamma_g <g_g, s_g>       B = sum_g gamma_g^2 ||g_g||^2       C = ||s||^2

so that ``||s_k||^2 = C + 2 lambda A + lambda^2 B`` needs no second pass (and, under
sharding, one all-reduce of a 3-vector).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class DAdaptEstimate:
    """The scalars of the estimate, kept as a dict of 0-d tensors (resumable via state_dict).

    Keys: ``d`` (current estimate), ``d_hat`` (latest lower bound), ``r`` (numerator),
    ``grad_norm0`` (G0: norm of the first gradient, frozen), ``step`` (global step count).
    """

    @staticmethod
    def initial(d0: float, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        def scalar(x: float) -> Tensor:
            return torch.tensor(x, device=device, dtype=dtype)

        return {
            "d": scalar(d0),
            "d_hat": scalar(0.0),
            "r": scalar(0.0),
            "grad_norm0": scalar(0.0),
            "step": scalar(0.0),
        }

    @staticmethod
    def set_grad_norm0(est: dict[str, Tensor], sq_norm: Tensor,
                       sq_norm_loss: Tensor | None = None) -> None:
        """Freeze G0 at the first non-zero gradient norm.

        Steps before it (all gradients zero) take no step: lambda = 0, not d / 0. With
        weight decay in the gradient ``sq_norm`` includes it (docs/algorithms.md §4c) and
        ``sq_norm_loss`` is the loss gradient's alone: the decay by itself does not start
        the estimate.
        """
        g0 = est["grad_norm0"]
        new = torch.sqrt(sq_norm)
        if sq_norm_loss is not None:
            started = sq_norm_loss > 0
            new = torch.where(started, new, started)  # False promotes to 0.0: no zeros kernel
        est["grad_norm0"] = torch.where(g0 > 0, g0, new)

    @staticmethod
    def base_step(est: dict[str, Tensor]) -> Tensor:
        """lambda_k / gamma = d_k / G0: multiply by a group's gamma to get its step."""
        g0 = est["grad_norm0"]
        fixed = g0 > 0
        return torch.where(fixed, est["d"] / g0, fixed)  # False promotes to 0.0

    @staticmethod
    def update(
        est: dict[str, Tensor],
        lam: Tensor,
        dot_gs: Tensor,
        sq_norm_g: Tensor,
        sq_norm_s: Tensor,
        growth_rate: float,
        d_coef: float = 1.0,
    ) -> None:
        """Advance r, d_hat and d from the sums A, B, C (see module docstring).

        ``d_coef`` scales the bound before it can raise d (1: the published rule).
        """
        d = est["d"]
        step_dot = lam * dot_gs
        est["r"] = est["r"] + step_dot
        # sq_norm_s + 2 lam A + lam^2 B, with 2 lam A = 2 (lam A) (exact: a power of 2) in
        # the add's alpha; as written, not as an addcmul (a fused multiply-add rounds once)
        sq_norm_s_new = torch.add(sq_norm_s, step_dot, alpha=2.0) + lam * lam * sq_norm_g
        # ||s|| = 0 (every gradient so far was zero) leaves the bound undefined: keep d.
        defined = sq_norm_s_new > 0
        d_hat = torch.where(defined, 2.0 * est["r"] / torch.sqrt(sq_norm_s_new), defined)
        bound = d_coef * d_hat if d_coef != 1.0 else d_hat
        if not math.isinf(growth_rate):
            bound = torch.minimum(bound, growth_rate * d)
        est["d_hat"] = d_hat
        est["d"] = torch.maximum(d, bound)
        est["step"] = est["step"] + 1

    @staticmethod
    def polyak_warmup(est: dict[str, Tensor], loss: Tensor, sq_norm_g: Tensor,
                      growth: float, d_ref: Tensor) -> None:
        """The Polyak warm-up of ``d`` (option ``warmup="polyak"``, docs/algorithms.md §4d).

        ``P = max(loss, 0) / ||g'||`` is the Polyak distance in scaled units: for a convex
        loss whose minimum is 0, ``loss <= <g', y - y*> <= ||g'|| ||y - y*||``, so P is a
        lower bound on the distance to the solution, like ``d_hat``. While the warm-up is
        on (``est["warming"] > 0``), ``d`` rises to ``min(P, growth * d_ref)``; it ends for
        good at the first step where that reaches P (with ``growth = inf``: at once, the
        first-step estimate). Steps before G0 is fixed (all gradients zero) leave it alone.
        P is invariant to the scale of alpha and of the loss (both of its factors scale
        alike), so requirement 1 holds; it never lowers ``d``.
        """
        # bool tensors as the 0.0 / 1.0 of a where (type promotion): no zeros kernel
        informative = sq_norm_g > 0
        polyak = torch.where(informative,
                             torch.clamp(loss.to(est["d"].dtype), min=0.0) /
                             torch.sqrt(torch.where(informative, sq_norm_g, ~informative)),
                             informative)
        target = polyak if math.isinf(growth) else torch.minimum(polyak, growth * d_ref)
        active = (est["warming"] > 0) & (est["grad_norm0"] > 0)
        d = torch.where(active, torch.maximum(est["d"], target), est["d"])
        keep = (polyak > d) | ~active  # the warm-up ends where it is active and P <= d
        est["warming"] = torch.where(keep, est["warming"], keep)
        est["d"] = d
