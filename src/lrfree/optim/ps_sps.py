"""PS-SPS: the stochastic Polyak step run in the parameter-scaled space of Adam."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lrfree.optim import _scaled
from lrfree.optim._base import (
    Bucket, check_betas, check_choice, check_polyak_options, check_positive,
)
from lrfree.rules.polyak import PolyakStep
from lrfree.scaling import Scaling, get_scaling


class PSSPS(_scaled.ScaledSpaceOptimizer):
    r"""Learning-rate-free Adam: the capped stochastic Polyak step on the Adam-rescaled network.

    With ``a_k`` from the scaling, :math:`N = \mathrm{mean}(a_1)` (frozen), the scaled
    gradient :math:`g'_k = g_k\sqrt{N/a_k}`, the mini-batch loss :math:`\ell_k` and
    :math:`\gamma_k` the group's ``lr``:

    .. math::
        \eta^P_k = \frac{\max(\ell_k - f^*, 0)}{c\lVert g'_k\rVert^2 + \delta},\quad
        \eta_k = \min(\eta^P_k, \mathrm{cap}_k),\quad
        \mathrm{cap}_{k+1} = \mathrm{cap\_growth}\cdot\max(\eta_k, \mathrm{floor}),

        x_{k+1} = x_k - \gamma_k\,\eta_k N\,\hat m_k / a_k .

    The first cap (and ``floor``) is ``cap_start`` times the first positive Polyak step, so
    training starts with small steps that may grow by ``cap_growth`` per step. After each
    step every group carries ``polyak_step`` (:math:`\eta_k`) and ``effective_lr``
    (:math:`\gamma_k\eta_k N`, the lr torch.optim.Adam would need), as 0-d tensors.

    The loss is required: ``opt.step(loss=loss)`` after ``loss.backward()`` (a float or a
    0-d tensor; no ``.item()``), or ``opt.step(closure)``.

    Args:
        params: parameters or param groups; ``lr`` multiplies the step (schedulers
            compose), per-group values are relative multipliers, ``lr=0`` freezes a group.
        betas, eps: as Adam. ``c``: the Polyak constant (0.5: the step that minimises a
            quadratic model's upper bound; smaller is more aggressive).
        f_star: a lower bound on the loss (0 for cross-entropy and squared errors). With
            L2-regularised objectives whose optimum is far above 0, ``f_star = 0`` gives
            steps that are too large: pass a better bound or use weight decay instead.
        delta: added to the denominator so a zero gradient gives a finite step.
        cap_start, cap_growth: the smooth cap described above.
        average, average_power: iterate averaging as in :class:`lrfree.PSDASGD`, with
            weights k^p (the Polyak rule has no distance estimate to weight by).
        weight_decay, decouple, scaling, alpha_norm: as in :class:`lrfree.PSDASGD`
            ("running" recomputes N every step).
        foreach, nonfinite, state_dtype, process_group, fused: as in
            :class:`lrfree.PSDASGD` (the fused Triton step takes two passes here).
            Under torch.distributed the loss is averaged over the ranks (DDP and FSDP
            give each rank its own batch; the Polyak step must agree everywhere).
        loss_group: the ranks the loss is averaged over: "auto" (default: the
            ``process_group``/FSDP mesh if sharded, else every rank when torch.distributed
            is initialised), None (the loss is used as given: it is already global, or
            each rank trains its own model, where averaging would mix unrelated losses and
            hang when the ranks step at different times) or a ProcessGroup.

    Example::

        opt = lrfree.PSSPS(model.parameters())
        for x, y in data:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step(loss=loss)

    Failure modes: once the loss reaches ``f_star`` the step is 0 (the cap then restarts
    from its floor); a loose ``f_star`` overshoots; a noisy mini-batch loss gives a noisy
    step, which momentum (beta1) smooths.
    """

    needs_loss = True

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, c: float = 0.5, f_star: float = 0.0, delta: float = 1e-8,
                 cap_start: float = 1e-2, cap_growth: float = 1.02, weight_decay: float = 0.0,
                 decouple: bool = True, scaling: str | Scaling = "adam",
                 alpha_norm: str = "initial", average: bool = False,
                 average_power: float = 8.0, *, foreach: bool | None = None,
                 nonfinite: str = "skip", state_dtype: str = "float32",
                 process_group: Any = None, loss_group: Any = "auto",
                 fused: bool | None = None) -> None:
        betas = check_betas(betas)
        check_positive("eps", eps, allow_zero=True)
        check_polyak_options(c, f_star, delta, cap_start, cap_growth)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_choice("alpha_norm", alpha_norm, _scaled.ALPHA_NORMS)
        check_choice("average", average, (True, False))
        check_positive("average_power", average_power, allow_zero=True)
        scaling = get_scaling(scaling)
        if scaling.name in ("adam", "amsgrad", "rmsprop", "adafactor") and eps == 0:
            raise ValueError("eps=0 is invalid with this scaling: use eps > 0 (default 1e-8)")
        defaults = dict(lr=lr, betas=betas, eps=eps, c=c, f_star=float(f_star), delta=delta,
                        cap_start=cap_start, cap_growth=cap_growth, weight_decay=weight_decay,
                        decouple=bool(decouple), scaling=scaling.name, alpha_norm=alpha_norm,
                        average=average, average_power=average_power, polyak_step=0.0)
        super().__init__(params, defaults, foreach=foreach, nonfinite=nonfinite,
                         state_dtype=state_dtype, process_group=process_group,
                         loss_group=loss_group)
        # The group keeps the name (state_dict stays plain data); the object may be a
        # user-defined Scaling.
        self._scaling = scaling
        self._fused = _scaled.check_fused(self, fused)

    def _update(self, buckets: list[Bucket], loss: Tensor | None) -> None:
        assert loss is not None
        if _scaled.fused_step(self, buckets, loss):  # the Triton kernels on CUDA: two passes
            return
        group0 = self.param_groups[0]
        est, _, norm = self._enter_scaled_space(buckets, PolyakStep.initial)
        device, dtype = self._device(), self._scalar_dtype()
        (sq_norm_g,) = self._reduce([_scaled.sq_norm_scaled(buckets, norm, device, dtype)])
        eta = PolyakStep.update(est, loss.to(device, dtype), sq_norm_g, group0["f_star"],
                                group0["c"], group0["delta"], group0["cap_start"],
                                group0["cap_growth"])
        # averaging weights k^p: the Polyak rule has no distance scale (the scale is read
        # only when averaging: no kernel for it otherwise)
        self._take_step(buckets, est, eta, norm,
                        torch.ones_like(eta) if group0["average"] else eta)
        for group in self.param_groups:
            group["polyak_step"] = eta
