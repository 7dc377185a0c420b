"""PS-DA-SGD: D-Adaptation SGD run in the parameter-scaled space of Adam."""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from lrfree.optim import _scaled
from lrfree.optim._base import (
    DEFAULT_GROWTH_RATE, Bucket, check_betas, check_choice, check_dadapt_start, check_positive,
    sq_norms, total,
)
from lrfree.rules.dadapt import DAdaptEstimate
from lrfree.scaling import Scaling, bias_corrections, get_scaling


class PSDASGD(_scaled.ScaledSpaceOptimizer):
    r"""Learning-rate-free Adam: D-Adaptation SGD on the Adam-rescaled network.

    With ``a_k`` from the scaling (Adam: :math:`\sqrt{\hat v_k}+\epsilon`), the
    normaliser :math:`N = \mathrm{mean}(a_1)` (frozen at the first step), the scaled
    gradient :math:`g'_k = g_k\sqrt{N/a_k}` and :math:`\gamma_k` the group's ``lr``:

    .. math::
        \lambda_k = d_k\gamma_k/\lVert g'_1\rVert,\quad
        r_k = r_{k-1} + \lambda_k\langle g'_k, s_{k-1}\rangle,\quad
        s_k = s_{k-1} + \lambda_k g'_k,

        \hat d = 2r_k/\lVert s_k\rVert,\quad
        d_{k+1} = \max(d_k, \min(\mathrm{d\_coef}\cdot\hat d,\ \mathrm{growth\_rate}\cdot d_k)),

        x_{k+1} = x_k - \lambda_k N\,\hat m_k / a_k .

    ``effective_lr`` = :math:`\lambda_k N` is the lr ``torch.optim.Adam`` would need for the
    same step; it is written into every param group after each step, beside ``d`` and
    ``d_hat`` (0-d tensors: ``float(opt.param_groups[0]["effective_lr"])`` to log).

    Args:
        params: parameters or param groups. A group's ``lr`` multiplies the estimated step
            (default 1.0; torch LR schedulers compose); different groups may use different
            multipliers; ``lr=0`` freezes a group (its gradients do not move the estimate).
        betas: (beta1, beta2) of Adam. beta1 = 0 uses the raw gradient as direction.
        eps: added to ``sqrt(v_hat)`` as in Adam.
        weight_decay: decoupled (AdamW-style, scaled by ``effective_lr``) unless
            ``decouple=False``, which adds ``weight_decay * x`` to the gradient (L2).
        scaling: the alpha rule: "adam", "amsgrad", "rmsprop", "adagrad", "adafactor"
            (Adam with a factored second moment for matrices: O(rows + cols) memory, see
            :mod:`lrfree.scaling_factored`) or "none".
        alpha_norm: "initial" (default: N frozen at step 1), "running" (N recomputed every
            step, with G0 replaced by a bias-corrected EMA of ||g'||^2), "none" (N = 1; not
            invariant to rescaling alpha: for ablations).
        d0_lr: where the estimate starts, as the first effective lr in Adam-lr units
            (None: 1e-4 unless d0 is given): ``d_1 = d0_lr sqrt(n)`` for the n elements
            with a non-zero first gradient, which makes the first effective lr exactly
            ``d0_lr`` for Adam's scaling (``a_1 = |g_1|``, eps aside) while staying
            invariant to the scale of alpha. ``d`` never falls below its start: where the
            right Adam lr is below 1e-4 (fine-tuning large pretrained models), give a
            smaller ``d0_lr`` (1e-6 is DAdaptAdam's and Prodigy's start; a slower
            warm-up, docs/algorithms.md §4e). Give ``d0`` instead to start from a
            distance in scaled units.
        d0: initial estimate of the distance to the solution in scaled units (the
            published D-Adaptation parameter; default: unused, see ``d0_lr``). In scaled
            units a fixed ``d0`` starts the effective lr near ``d0 / sqrt(n)`` for n
            parameters, ~1e-9 for a small CNN: a warm-up ~2.5 orders of magnitude longer
            (docs/algorithms.md, "Where the estimate starts").
        d_coef: multiplier on the estimate ``d_hat``; < 1 is more conservative.
        growth_rate: bound on the growth of ``d`` per step (default 1.5; ``inf`` is the
            published rule). Unbounded, the estimate can jump x3 in a step into an lr that
            breaks the network, and then grows on the overshoot's own gradients
            (docs/algorithms.md §4g).
        warmup: "none" (default: D-Adaptation's estimate alone) or "polyak": ``d`` is also
            raised towards the Polyak distance ``P = max(loss, 0) / ||g'||`` in scaled units
            (a lower bound on the distance to the solution for a convex loss with minimum
            0) until it reaches it once (docs/algorithms.md, "Polyak warm-up"). Needs
            ``opt.step(loss=loss)``.
        warmup_growth: with ``warmup="polyak"``, the factor ``d`` may grow by per step
            towards P (default inf: ``d`` starts at ``max(start, P)`` at the first step).
        average: keep a weighted average of the iterates (weights (d_k/gamma_k)^2 k^p,
            gamma_k the group lr multiplier; see
            :mod:`lrfree.averaging`; one more state tensor). ``opt.eval()`` puts the
            average into the model for evaluation and export, ``opt.train()`` puts the
            training weights back; ``with opt.averaged(): ...`` does both.
        average_power: p of the averaging weights (default 8).
        schedule_free: ``"auto"`` (default), True or False. True takes the schedule-free
            iteration (Defazio et al. 2024) in the scaled space instead of the momentum
            step: ``z`` takes plain SGD steps of ``effective_lr * g / a`` (no momentum),
            ``x`` is their running average (weights: the largest effective lr so far,
            squared) and the gradient is taken at ``y = (1 - beta1) z + beta1 x``, which
            the parameters hold while training. The estimate is unchanged. No schedule is
            needed: leave ``lr`` constant (a scheduler that lowers it gets a warning).
            ``opt.eval()`` puts the average x into the model (evaluate and export it),
            ``opt.train()`` puts y back; the same 3 state tensors (z replaces m). Needs
            ``beta1 > 0``; not with ``average=True``; the fused kernels take the momentum
            step only. False takes the momentum step, which wants a schedule. ``"auto"``
            settles at the first step: False if an LR scheduler is attached to the
            optimizer by then (torch's schedulers, and those of HF Trainer and Lightning,
            mark the param groups with ``initial_lr``), True otherwise; False from the
            start with ``average=True``, ``betas[0] = 0`` or ``fused=True``
            (docs/algorithms.md §4h). A warm-up-only scheduler also selects the momentum
            step: pass ``schedule_free=True`` to combine the two.
        foreach: multi-tensor kernels (default: where available) or one tensor at a time.
        fused: the one-pass Triton step on CUDA (:mod:`lrfree.kernels.triton_step`). None
            (default): used where supported (CUDA, triton installed, ``scaling="adam"``,
            ``alpha_norm="initial"``, float32/float64 parameters, contiguous tensors, no
            sharding), else the foreach step (same result to float rounding); True: an
            unsupported configuration is a ValueError; False: never.
        nonfinite: "skip" (default: a step with a non-finite gradient or loss is skipped
            and counted in ``group["skipped_steps"]``, nothing changes), "raise", or
            "unchecked" (no check, no host sync).
        state_dtype: "float32" keeps the state of bf16/fp16 parameters in float32;
            "param" keeps it in the parameter dtype.
        process_group: the group the parameters are sharded over, when each rank holds
            part of them (FSDP2 DTensor parameters are detected without it). Not needed
            for DDP. The sums of the estimate are all-reduced over it once per step.

    Global settings (``scaling``, ``alpha_norm``, ``d0``, ``d_coef``, ``growth_rate``) are read from the
    first param group; the estimate is one set of scalars shared by all groups.

    Example (no scheduler: the schedule-free iteration; evaluate after ``opt.eval()``)::

        opt = lrfree.PSDASGD(model.parameters())
        opt.train()
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        opt.eval()  # the average x: evaluate and save it

    With a scheduler (attached before the first step: the momentum step)::

        opt = lrfree.PSDASGD(model.parameters())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()

    Failure modes: ``d`` grows from its start in the first ~10-40 steps (slower the noisier
    the gradient) and never decreases, so a start above the right lr and an overshoot
    stay. The momentum step does not decay without a schedule under gradient noise; the
    schedule-free iteration's average stalls at a constant step on convex problems
    (docs/algorithms.md §4h). Use ``d_coef < 1`` when the estimate overshoots.
    """

    _rule_state = ("s",)

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 scaling: str | Scaling = "adam", alpha_norm: str = "initial",
                 d0: float | None = None,
                 d_coef: float = 1.0, growth_rate: float = DEFAULT_GROWTH_RATE,
                 average: bool = False, average_power: float = 8.0,
                 d0_lr: float | None = None, *, schedule_free: bool | str = "auto",
                 warmup: str = "none",
                 warmup_growth: float = float("inf"),
                 foreach: bool | None = None, nonfinite: str = "skip",
                 state_dtype: str = "float32", process_group: Any = None,
                 fused: bool | None = None) -> None:
        betas = check_betas(betas)
        check_positive("eps", eps, allow_zero=True)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        d0, d0_lr = check_dadapt_start(d0, d0_lr, d_coef, growth_rate)
        check_choice("alpha_norm", alpha_norm, _scaled.ALPHA_NORMS)
        check_warmup(warmup, warmup_growth, fused)
        check_choice("average", average, (True, False))
        schedule_free = check_schedule_free(schedule_free, average, betas, fused)
        check_positive("average_power", average_power, allow_zero=True)
        scaling = get_scaling(scaling)
        if scaling.name in ("adam", "amsgrad", "rmsprop", "adafactor") and eps == 0:
            raise ValueError("eps=0 is invalid with this scaling: a zero second moment would "
                             "divide by zero; use eps > 0 (default 1e-8)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decouple=bool(decouple), scaling=scaling.name, alpha_norm=alpha_norm,
                        d0=d0, d_coef=d_coef, growth_rate=growth_rate, average=average,
                        average_power=average_power, d0_lr=d0_lr, d=d0, d_hat=0.0,
                        warmup=warmup, warmup_growth=warmup_growth,
                        schedule_free=schedule_free)
        super().__init__(params, defaults, foreach=foreach, nonfinite=nonfinite,
                         state_dtype=state_dtype, process_group=process_group)
        # The group keeps the name (state_dict stays plain data); the object may be a
        # user-defined Scaling.
        self._scaling = scaling
        # the Polyak warm-up reads the loss: the base class then requires it, checks it for
        # non-finite values, averages it over ranks, and the framework integrations
        # (lrfree.integrations) hand it over, as they do for PSSPS
        self.needs_loss = warmup != "none"
        self._fused = _scaled.check_fused(self, fused)
        if warmup != "none" and not math.isinf(warmup_growth):
            self._fused = False  # the kernels take steady-state steps only (check_warmup)

    def _update(self, buckets: list[Bucket], loss: Tensor | None) -> None:
        if _scaled.fused_step(self, buckets, loss):  # the Triton kernel on CUDA: one pass
            return
        group0 = self.param_groups[0]
        if group0["schedule_free"] and not torch.compiler.is_compiling():
            warn_if_lr_decays(self)
        est, first, norm = self._enter_scaled_space(
            buckets, lambda dev, dt: DAdaptEstimate.initial(group0["d0"], dev, dt))
        device, dtype = self._device(), self._scalar_dtype()
        _scaled.scale_gradients(buckets, norm)
        dot_gs, sq_g, sq_g_weighted, sq_s, sq_loss = [], [], [], [], []
        # from the groups, not the buckets: every rank must reduce the same number of sums
        decayed = any(g["weight_decay"] != 0 and g["decouple"] for g in self.param_groups)
        for b in buckets:
            gamma = b.group["lr"]
            if b.group["weight_decay"] != 0 and b.group["decouple"]:
                # the loss gradient's ||g'||^2: the decay alone does not start the estimate
                raw = sq_norms(b.scaled).to(dtype)
                if b.scaled_coefs is not None:
                    raw = raw * b.scaled_coefs.to(dtype) ** 2
                sq_loss.append(raw.sum())
                add_decoupled_decay(b, b.group["weight_decay"])  # g' + u, see below
            dot, sq = _scaled.scaled_sums(b, b.states["s"], dtype)
            if not (b.group["weight_decay"] != 0 and b.group["decouple"]):
                sq_loss.append(sq)
            dot_gs.append(dot if gamma == 1 else gamma * dot)  # (x 1 is exact: no kernel)
            sq_g.append(sq)
            sq_g_weighted.append(sq if gamma == 1 else gamma * gamma * sq)
            sq_s.append(sq_norms(b.states["s"]).sum().to(dtype))
        sums = [total(parts, device, dtype) for parts in (sq_g, dot_gs, sq_g_weighted, sq_s)]
        start = first and group0["d0_lr"] is not None
        if start:  # elements with a non-zero first gradient, for the start below
            sums.append(total([sum(torch.count_nonzero(g) for g in b.grads) for b in buckets],
                              device, dtype))
        if decayed:
            sums.append(total(sq_loss, device, dtype))
        # one collective for every sum of the step
        sq_norm_g, dot, sq_weighted, sq_norm_s, *rest = self._reduce(sums)
        sq_norm_loss = rest[-1] if decayed else None  # (no pop: Dynamo <= 2.11 sees a tuple)
        if start:
            est["live_count"] = rest[0]
        if group0["d0_lr"] is not None:
            # d_1 = d0_lr sqrt(n): with Adam's a_1 = |g_1| over the n elements with a
            # non-zero gradient, G0 = N sqrt(n), so the first effective lr d N / G0 is d0_lr
            # (Adam units), and unlike d0_lr G0 / N it is invariant to the scale of alpha.
            # Taken at the step that fixes G0 (the first non-zero gradient).
            # d0_lr sqrt(n) is kept from the step that counted n (eager: the same tensor,
            # unmodified, and the same d0_lr; the compiled step computes it)
            live, d0_lr = est["live_count"], group0["d0_lr"]
            if torch.compiler.is_compiling():
                start_d = d0_lr * torch.sqrt(live.clamp(min=1))
            else:
                cached = getattr(self, "_start_cache", None)
                if cached is None or cached[0] is not live or cached[1] != live._version \
                        or cached[2] != d0_lr:
                    cached = (live, live._version, d0_lr, d0_lr * torch.sqrt(live.clamp(min=1)))
                    self._start_cache = cached
                start_d = cached[3]
            est["d"] = torch.where(est["grad_norm0"] > 0, est["d"], start_d)
        DAdaptEstimate.set_grad_norm0(est, sq_norm_g, sq_norm_loss)
        warm_loss = self._warmup_loss(est, loss) if group0["warmup"] == "polyak" else None
        jump = warm_loss is not None and math.isinf(group0["warmup_growth"])
        if jump:  # the first-step estimate d_1 = max(start, P_1), before the step uses it
            DAdaptEstimate.polyak_warmup(est, warm_loss, sq_norm_g, math.inf, est["d"])
        lam = self._base_step(est, sq_norm_g, group0)
        d_used = est["d"]
        DAdaptEstimate.update(est, lam, dot, sq_weighted, sq_norm_s, group0["growth_rate"],
                              group0["d_coef"])
        if warm_loss is not None and not jump:  # d grows x warmup_growth towards P
            DAdaptEstimate.polyak_warmup(est, warm_loss, sq_norm_g, group0["warmup_growth"],
                                         d_used)
        for b in buckets:  # s += lam * gamma * g', as one addcmul with a 0-d multiplier
            step = (lam if b.group["lr"] == 1 else lam * b.group["lr"]).to(b.scaled[0].dtype)
            multipliers = [step] * len(b.scaled) if b.scaled_coefs is None \
                else (b.scaled_coefs * step).unbind()
            torch._foreach_addcmul_(b.states["s"], b.scaled, multipliers)
        self._take_step(buckets, est, lam, norm, d_used)
        for group in self.param_groups:
            group["d"], group["d_hat"] = est["d"], est["d_hat"]

    def _resolve_options(self) -> None:
        """``schedule_free="auto"`` becomes True or False at the first step, before the
        state is made: the momentum step if an LR scheduler is attached (torch's schedulers
        write ``initial_lr`` into every param group when they are created; HF Trainer's and
        Lightning's are torch's), the schedule-free iteration if none is
        (docs/algorithms.md §4h)."""
        groups = self.param_groups
        if not any(g.get("schedule_free") == "auto" for g in groups):
            return
        resolved = groups[0]["schedule_free"]
        if resolved == "auto":
            resolved = not any("initial_lr" in g for g in groups)
        for g in groups:
            g["schedule_free"] = resolved

    def _load_checked(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups") or [{}]
        saved = saved_groups[0].get("schedule_free", False)
        own = self.param_groups[0]["schedule_free"]
        super()._load_checked(state_dict)
        # "auto" on either side: nothing was decided against the checkpoint
        if isinstance(saved, bool) and isinstance(own, bool) and saved != own:
            warnings.warn(
                f"PSDASGD: this checkpoint was saved with schedule_free={saved}, and this "
                f"optimizer was built with schedule_free={own}. Like every group option, the "
                f"checkpoint's value is restored with its state, so this optimizer now takes "
                f"the {'schedule-free' if saved else 'momentum'} step. To change the iteration, "
                "build a new optimizer and do not load the old optimizer state "
                "(docs/algorithms.md §4h).", UserWarning, stacklevel=3)

    def _warmup_loss(self, est: dict[str, Tensor], loss: Tensor | None) -> Tensor:
        """The loss for the Polyak warm-up (already averaged over ranks by the base class,
        which also refused a step without it: ``needs_loss``); starts the warm-up."""
        if loss is None:  # not reachable through step(): needs_loss is set with warmup
            raise ValueError('PSDASGD(warmup="polyak") needs the mini-batch loss: call '
                             "opt.step(loss=loss) after loss.backward(), or opt.step(closure)")
        if "warming" not in est:
            est["warming"] = torch.ones((), device=est["d"].device, dtype=est["d"].dtype)
        return loss

    def _base_step(self, est: dict[str, Tensor], sq_norm_g: Tensor,
                   group0: dict[str, Any]) -> Tensor:
        """lambda_k / gamma: d / G0, or d / sqrt(EMA of ||g'||^2) for alpha_norm="running"."""
        if group0["alpha_norm"] != "running":
            return DAdaptEstimate.base_step(est)
        beta2 = group0["betas"][1]
        ema = est.get("sq_norm_ema", torch.zeros_like(sq_norm_g))
        est["sq_norm_ema"] = beta2 * ema + (1.0 - beta2) * sq_norm_g
        corrected = est["sq_norm_ema"] / bias_corrections(beta2, [est["step"] + 1])[0]
        # no non-zero gradient yet: no step (as base_step does with G0 = 0), not d / 0
        return torch.where(corrected > 0, est["d"] / torch.sqrt(corrected),
                           torch.zeros_like(corrected))


def warn_if_lr_decays(opt: PSDASGD) -> None:
    """Warn once if a group's ``lr`` fell below its largest value so far under
    ``schedule_free=True``: a decaying scheduler drives the schedule-free iteration, which
    replaces the schedule (under a cosine schedule it trained worse than without one on all
    8 networks of the quick benchmark, docs/algorithms.md §4h). A warm-up, which only
    raises ``lr``, is fine. Host numbers only: a tensor ``lr`` is not read (that would
    sync the device)."""
    peaks = getattr(opt, "_lr_peaks", [])
    if peaks is None:  # warned already
        return
    opt._lr_peaks = peaks
    for index, group in enumerate(opt.param_groups):
        lr = group["lr"]
        if isinstance(lr, Tensor):
            continue
        if index >= len(peaks):
            peaks.append(lr)
        elif lr < peaks[index]:
            opt._lr_peaks = None
            warnings.warn(
                f"PSDASGD(schedule_free=True): the lr of param group {index} fell from "
                f"{peaks[index]:g} to {lr:g}, as under a decaying lr scheduler. The "
                "schedule-free iteration replaces the schedule: under a cosine schedule it "
                "trained worse than without one on all 8 networks of our quick benchmark "
                "(docs/algorithms.md §4h). Drop the decaying scheduler (a warm-up is fine), or "
                "use schedule_free=False to keep it.", UserWarning, stacklevel=2)
            return
        else:
            peaks[index] = lr


def check_schedule_free(schedule_free: bool | str, average: bool, betas: tuple[float, float],
                        fused: bool | None) -> bool | str:
    """The checked option. ``"auto"`` is settled here where the options already exclude
    the schedule-free iteration (``average=True``, ``betas[0] = 0``, ``fused=True``: False,
    what those options meant before "auto" became the default), else at the first step."""
    check_choice("schedule_free", schedule_free, (True, False, "auto"))
    if schedule_free == "auto":
        return False if average or betas[0] == 0 or fused else "auto"
    if not schedule_free:
        return False
    if average:
        raise ValueError("schedule_free=True and average=True both keep an average of the "
                         "iterates: use one (schedule_free=True evaluates at its own average "
                         "after opt.eval())")
    if betas[0] == 0:
        raise ValueError("schedule_free=True needs betas[0] > 0: beta1 is the interpolation "
                         "y = (1 - beta1) z + beta1 x (default 0.9); with 0 the average "
                         "cannot be recovered for opt.eval()")
    if fused:
        raise ValueError("fused=True is not supported with schedule_free=True (the fused "
                         "kernels take the momentum step); use fused=None or fused=False")
    return True


def check_warmup(warmup: str, warmup_growth: float, fused: bool | None) -> None:
    check_choice("warmup", warmup, ("none", "polyak"))
    check_positive("warmup_growth", warmup_growth, allow_inf=True)
    if warmup_growth <= 1:
        raise ValueError(f"warmup_growth={warmup_growth!r} is invalid: it must be > 1 "
                         "(the factor d may grow by per step; inf: at once)")
    if warmup != "none" and not math.isinf(warmup_growth) and fused:
        raise ValueError("fused=True cannot run warmup_growth < inf: the fused kernels take "
                         "steady-state steps only; use fused=None or warmup_growth=inf")


def add_decoupled_decay(b: Bucket, weight_decay: float) -> None:
    """Make ``b``'s scaled gradient g' + u, with u = wd sqrt(N a) x the decoupled decay in
    scaled units (docs/algorithms.md, "Weight decay").

    The step x <- x (1 - lam N wd) is, in the scaled coordinates y = alpha x (alpha^2 =
    a / N), y <- y - lam (N wd y): a gradient step on (N wd / 2) ||y||^2 whose gradient is
    u. The estimate's sums must see it, or the iterate moves by a term that s does not
    hold and d_hat = 2 r / ||s|| grows without bound once the decay balances the gradient
    (g' = -u, a constant non-zero g': r grows like k^2, ||s|| like k). In the form
    g' = coefs * scaled, coefs = sqrt(N / factor): scaled += wd factor sqrt(d) x.
    """
    params = _cast(b.params, b.scaled)
    if b.denoms is None:  # a = 1, N = 1: u = wd x (a new list: b.scaled is b.grads)
        b.scaled = torch._foreach_add(b.scaled, params, alpha=weight_decay)
        return
    root = torch._foreach_sqrt(b.denoms)
    if b.factors is None:
        torch._foreach_addcmul_(b.scaled, root, params, value=weight_decay)
        return
    weights = (b.factors.to(root[0].dtype) * weight_decay).unbind()
    torch._foreach_mul_(root, weights)
    torch._foreach_addcmul_(b.scaled, root, params)


def _cast(tensors: list[Tensor], reference: list[Tensor]) -> list[Tensor]:
    if tensors[0].dtype == reference[0].dtype:
        return tensors
    return [t.to(r.dtype) for t, r in zip(tensors, reference)]
