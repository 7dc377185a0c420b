"""Parameter scalings: the "adaptive" half of an adaptive method.

An adaptive method that updates ``x -= lr * m / a`` is plain gradient descent on the
parameters rescaled by ``alpha = sqrt(a)`` (Suh & Seo 2024). A scaling owns the
per-coordinate statistics that define ``a`` and computes ``a_k`` from them:

=========  ==============================================  =============
name       a_k                                             state
=========  ==============================================  =============
adam       sqrt(v_k / (1 - beta2^k)) + eps                  v (EMA of g^2)
amsgrad    sqrt(max_{i<=k} v_i / (1 - beta2^i)) + eps       v, v_max
rmsprop    sqrt(v_k) + eps                                  v
adagrad    sqrt(sum_i g_i^2) + eps                          v (sum of g^2)
adafactor  sqrt(r_k c_k^T / mean(r_k) / (1 - beta2^k))     v_row, v_col (EMAs of the row
           + eps for matrices; adam's below 2 dims         and column means of g^2);
           (:mod:`lrfree.scaling_factored`)                v below 2 dims
none       1                                                (nothing)
=========  ==============================================  =============

Every function works on lists of tensors with ``torch._foreach_*`` ops, so the same code
runs one tensor at a time (lists of length one) or many at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lrfree import scaling_factored

SCALINGS = ("adam", "amsgrad", "rmsprop", "adagrad", "adafactor", "none")


@dataclass(frozen=True)
class Scaling:
    """One alpha rule. ``beta2`` and ``eps`` come from the optimizer's group."""

    name: str

    @property
    def state_names(self) -> tuple[str, ...]:
        if self.name == "none":
            return ()
        if self.name == "amsgrad":
            return ("v", "v_max")
        if self.name == "adafactor":
            return scaling_factored.STATE_NAMES
        return ("v",)

    def state_shape(self, name: str, shape: torch.Size) -> torch.Size:
        """The shape of state ``name`` for a parameter of ``shape``."""
        if self.name == "adafactor":
            return scaling_factored.state_shape(name, shape)
        return shape

    @property
    def is_identity(self) -> bool:
        return self.name == "none"

    def denominators(
        self,
        states: dict[str, list[Tensor]],
        grads: list[Tensor],
        steps: list[Tensor],
        beta2: float,
        eps: float,
    ) -> list[Tensor] | None:
        """Update the statistics with this step's gradients and return new tensors ``a_k``.

        ``steps`` holds each tensor's own step count (already incremented), so a parameter
        whose first gradient arrives late gets its own bias correction. Returns None for
        the identity scaling (a = 1).
        """
        if self.name == "none":
            return None
        if self.name == "adafactor":
            return scaling_factored.denominators(states, grads, steps, beta2, eps)
        v = states["v"]
        if self.name == "adagrad":
            torch._foreach_addcmul_(v, grads, grads)
        else:
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        if self.name in ("adagrad", "rmsprop"):
            a = torch._foreach_sqrt(v)
        else:
            bias2 = bias_corrections(beta2, steps)
            v_hat = torch._foreach_div(v, bias2)
            if self.name == "amsgrad":
                torch._foreach_maximum_(states["v_max"], v_hat)
                v_hat = states["v_max"]
            a = torch._foreach_sqrt(v_hat)
        torch._foreach_add_(a, eps)
        return a

    def factored_denominators(
        self,
        states: dict[str, list[Tensor]],
        grads: list[Tensor],
        steps: list[Tensor],
        beta2: float,
        eps: float,
        bias2: Tensor | None = None,
    ) -> tuple[list[Tensor] | None, Tensor | None]:
        """As :meth:`denominators`, but ``a_k = factors[i] * d[i]`` with ``factors`` a 1-d
        tensor (None: 1), so a per-tensor constant never costs a pass over the elements.

        Adam: ``d = sqrt(v) + eps * sqrt(1 - beta2^k)`` and ``factor = 1 / sqrt(1 - beta2^k)``,
        two tensor passes fewer than dividing ``v`` by its bias correction. ``bias2``: the
        1-d ``1 - beta2^k`` of :func:`bias_correction_vectors` where the caller has it
        (None: computed here). Other scalings (including user-defined ones) return
        ``(denominators(...), None)``.
        """
        if self.name != "adam" or type(self).denominators is not Scaling.denominators:
            return self.denominators(states, grads, steps, beta2, eps), None
        v = states["v"]
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        # the per-tensor scalars as one vector: a handful of kernels, not a few per tensor
        if bias2 is None:
            bias2 = 1.0 - beta2 ** torch.stack(steps)
        root_bias2 = torch.sqrt(bias2)
        d = torch._foreach_sqrt(v)
        torch._foreach_add_(d, (eps * root_bias2).unbind())
        return d, torch.reciprocal(root_bias2)  # = 1.0 / root_bias2 (x 1.0 is exact)


def bias_correction_vectors(beta1: float, beta2: float, steps: list[Tensor]
                            ) -> tuple[Tensor | None, Tensor]:
    """``(1 - beta1**k, 1 - beta2**k)`` as 1-d tensors, one value per tensor's step count
    ``k``, from one stack of the counts: the momentum's and the scaling's bias corrections
    of a step (the first is None for ``beta1 = 0``)."""
    stacked = torch.stack(steps)
    if beta1 <= 0:
        return None, 1.0 - beta2 ** stacked
    # both powers in one kernel, the betas as a (2, 1) base (the same bits as beta ** k:
    # a Python-number base is a wrapped 0-d tensor of the exponent's dtype)
    bias1, bias2 = (1.0 - torch.pow(_betas(beta1, beta2, stacked), stacked)).unbind()
    return bias1, bias2


_BETAS: dict[tuple[float, float, torch.device, torch.dtype], Tensor] = {}


def _betas(beta1: float, beta2: float, like: Tensor) -> Tensor:
    """``[[beta1], [beta2]]`` on ``like``'s device and dtype, made once (eager): a tensor
    made from Python numbers on a GPU is a copy from the host at every step otherwise.
    Compiled, or for a tensor subclass (a FakeTensor, ...), it is made each time: the
    cache holds plain tensors only."""
    if torch.compiler.is_compiling() or type(like) is not Tensor:
        return torch.tensor([[beta1], [beta2]], device=like.device, dtype=like.dtype)
    key = (beta1, beta2, like.device, like.dtype)
    base = _BETAS.get(key)
    if base is None:
        base = _BETAS[key] = torch.tensor([[beta1], [beta2]], device=like.device,
                                          dtype=like.dtype)
    return base


def bias_corrections(beta: float, steps: list[Tensor]) -> list[Tensor]:
    """``1 - beta**k`` for each tensor's step count ``k``, computed on the device."""
    powers = torch._foreach_pow(beta, steps)
    torch._foreach_neg_(powers)
    torch._foreach_add_(powers, 1.0)
    return powers


def get_scaling(scaling: str | Scaling) -> Scaling:
    """Resolve a scaling name; raises ValueError naming the argument for unknown names."""
    if isinstance(scaling, Scaling):
        return scaling
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} is not known; use one of {', '.join(SCALINGS)}")
    return Scaling(scaling)
