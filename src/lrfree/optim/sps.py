"""SPS: the stochastic Polyak step for plain SGD (PS-SPS with alpha = 1 and no momentum)."""
from __future__ import annotations

from typing import Any

from lrfree.optim.ps_sps import PSSPS


class SPS(PSSPS):
    r"""Stochastic Polyak step (Loizou et al. 2021, SPS_max) with a smooth cap.

    .. math::
        \eta_k = \min\Big(\frac{\max(\ell_k - f^*, 0)}{c\lVert g_k\rVert^2 + \delta},
        \mathrm{cap}_k\Big),\quad x_{k+1} = x_k - \gamma_k\eta_k g_k

    with the cap of :class:`lrfree.PSSPS` (and its ``loss_group=``). ``effective_lr`` is the lr torch.optim.SGD would
    need. Needs the loss: ``opt.step(loss=loss)``.

    Example::

        opt = lrfree.SPS(model.parameters())
        loss = loss_fn(model(x), y); loss.backward(); opt.step(loss=loss)
    """

    def __init__(self, params: Any, lr: float = 1.0, c: float = 0.5, f_star: float = 0.0,
                 delta: float = 1e-8, cap_start: float = 1e-2, cap_growth: float = 1.02,
                 weight_decay: float = 0.0, decouple: bool = True, *,
                 foreach: bool | None = None, nonfinite: str = "skip",
                 state_dtype: str = "float32", process_group: Any = None,
                 loss_group: Any = "auto") -> None:
        super().__init__(params, lr=lr, betas=(0.0, 0.0), eps=0.0, c=c, f_star=f_star,
                         delta=delta, cap_start=cap_start, cap_growth=cap_growth,
                         weight_decay=weight_decay, decouple=decouple, scaling="none",
                         alpha_norm="none", foreach=foreach, nonfinite=nonfinite,
                         state_dtype=state_dtype, process_group=process_group,
                         loss_group=loss_group)
