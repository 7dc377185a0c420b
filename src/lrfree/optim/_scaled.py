"""The parameter-scaling half of a PS optimizer, shared by PS-DA-SGD and PS-SPS.

Per element, with ``a_k`` from the scaling and a scalar normaliser ``N``:

    alpha_k^2 = a_k / N          g'_k = g_k / alpha_k          x <- x - lam * N * m_hat_k / a_k

``lam`` is the step a steepest-descent rule chose in the scaled space; ``lam * N`` is the
learning rate torch.optim.Adam would need to take the same step (``effective_lr``).
Dividing ``a`` by N makes alpha dimensionless, so multiplying alpha by a constant leaves
every step unchanged (the paper's requirement 1); freezing N at the first step keeps the
step of still-training parameters from shrinking when others converge (requirement 2).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from lrfree import averaging
from lrfree.optim._base import (
    Bucket, LRFreeOptimizer, check_choice, dots, flat, sq_norms, sum_sq, total,
)
from lrfree.scaling import Scaling, bias_correction_vectors

ALPHA_NORMS = ("initial", "running", "none")
Reduce = Callable[[list[Tensor]], list[Tensor]]


def advance_moments(buckets: list[Bucket], scaling: Scaling) -> None:
    """Count the step, apply coupled weight decay, update m and the scaling's statistics."""
    for b in buckets:
        group = b.group
        torch._foreach_add_(b.states["step"], 1.0)
        if group["weight_decay"] != 0 and not group["decouple"]:
            b.grads = torch._foreach_add(b.grads, _like(b.params, b.grads), alpha=group["weight_decay"])
        beta1, beta2 = group["betas"]
        if beta1 > 0 and "m" in b.states:  # schedule-free: beta1 interpolates, no momentum
            torch._foreach_lerp_(b.states["m"], b.grads, 1.0 - beta1)
        steps = b.states["step"]
        if scaling.name == "adam" and \
                type(scaling).factored_denominators is Scaling.factored_denominators:
            # both bias corrections from one stack of the step counts; apply_step takes
            # the momentum's (the counts do not change in between)
            b.momentum_bias, bias2 = bias_correction_vectors(beta1, beta2, steps)
            b.denoms, b.factors = scaling.factored_denominators(
                b.states, b.grads, steps, beta2, group["eps"], bias2=bias2)
        else:
            b.momentum_bias = None
            b.denoms, b.factors = scaling.factored_denominators(
                b.states, b.grads, steps, beta2, group["eps"])


def alpha_normaliser(buckets: list[Bucket], est: dict[str, Tensor], mode: str, first: bool,
                     identity: bool, reduce: Reduce, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
    """N: the mean of a_k over the elements whose gradient is not zero, frozen at the first
    step ("initial"), recomputed every step ("running"), or 1 ("none", identity scaling).

    Elements with a zero gradient are left out: behind a zero-initialised layer every
    earlier layer has an exactly zero first gradient, and their a = eps would drag N (and
    with it the first steps) down by orders of magnitude (docs/algorithms.md section 3).
    """
    if mode == "none" or identity:
        est["alpha_norm"] = torch.ones((), device=device, dtype=dtype)
        return est["alpha_norm"]
    if mode == "initial" and not first:
        return est["alpha_norm"]
    sums = torch.zeros(4, device=device, dtype=dtype)
    for b in buckets:
        for i, (d, g) in enumerate(zip(b.denoms, b.grads)):
            live = g != 0
            part = torch.stack([torch.where(live, d, 0).sum(), d.sum()])
            if b.factors is not None:
                part = part * b.factors[i]
            count = torch.full((), d.numel(), device=part.device, dtype=part.dtype)
            sums = sums + torch.stack([part[0], live.sum().to(part.dtype), part[1],
                                       count]).to(device, dtype)
    live_sum, live_count, all_sum, all_count = reduce(list(sums.unbind()))
    est["alpha_norm"] = torch.where(live_count > 0, live_sum / live_count.clamp(min=1),
                                    all_sum / all_count.clamp(min=1))
    return est["alpha_norm"]


def scale_gradients(buckets: list[Bucket], norm: Tensor) -> None:
    """g' = g * sqrt(N / a) as ``scaled_coefs * scaled``: ``scaled = g / sqrt(d)`` is the one
    tensor pass, ``scaled_coefs = sqrt(N / factor)`` one multiplier per tensor."""
    for b in buckets:
        if b.denoms is None:
            b.scaled, b.scaled_coefs = b.grads, None
            continue
        # one new list, filled in place: on a CPU a fresh full-size temporary costs more
        # (page faults) than the pass that fills it
        b.scaled = torch._foreach_rsqrt(b.denoms)
        torch._foreach_mul_(b.scaled, b.grads)
        dtype = b.scaled[0].dtype
        factors = torch.ones(len(b.scaled), device=norm.device, dtype=dtype) \
            if b.factors is None else b.factors.to(dtype)
        b.scaled_coefs = torch.sqrt(norm.to(dtype) / factors)


def scaled_sums(b: Bucket, other: list[Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """<g', other> and ||g'||^2 over one bucket whose scaled gradient is materialised."""
    dot, sq = dots(b.scaled, other).to(dtype), sq_norms(b.scaled).to(dtype)
    if b.scaled_coefs is None:
        return dot.sum(), sq.sum()
    coefs = b.scaled_coefs.to(dtype)
    return (dot * coefs).sum(), (sq * coefs * coefs).sum()


def sq_norm_scaled(buckets: list[Bucket], norm: Tensor, device: torch.device,
                   dtype: torch.dtype) -> Tensor:
    """||g'||^2 = sum_i (N / factor_i) <g_i / d_i, g_i>, without materialising g' (the
    Polyak rule needs only this sum: one tensor pass fewer than forming g')."""
    parts = []
    for b in buckets:
        if b.denoms is None:
            parts.append(sum_sq(b.grads).to(dtype) * norm)
            continue
        if torch.compiler.is_compiling() or b.grads[0].device.type != "cpu":
            # compiled: fused into one loop; CUDA & co.: temporaries come from a cache
            per_tensor = dots(torch._foreach_div(b.grads, b.denoms), b.grads)
        else:  # a fresh full-size list costs page faults: g / d tensor by tensor, one buffer
            buffer = torch.empty(max(g.numel() for g in b.grads), dtype=b.grads[0].dtype,
                                 device=b.grads[0].device)
            per_tensor = torch.stack([
                torch.dot(torch.div(g, flat(d), out=buffer[:g.numel()]), g)
                for g, d in ((flat(g), d) for g, d in zip(b.grads, b.denoms))])
        weights = norm if b.factors is None else norm / b.factors.to(dtype)
        parts.append((per_tensor.to(dtype) * weights).sum())
    return total(parts, device, dtype)


def apply_step(buckets: list[Bucket], lrs: list[Tensor]) -> None:
    """x <- x (1 - lr * wd) - lr * m_hat / a, with ``lrs[i]`` bucket i's Adam-equivalent lr
    (a list, not a dict keyed by ``id(group)``: Dynamo up to torch 2.11 cannot trace
    ``id()`` of a dict, which broke ``lrfree.fused`` there).

    The bias correction, the factor of a and lr are one 0-d multiplier per tensor, folded
    into the denominators (which this consumes), so the step is one ``addcdiv``.
    Low-precision (bf16/fp16) parameters are updated in float32 and rounded once: rounding
    the decay factor first turns ``1 - 1e-5`` into 1 in bf16, and rounding the update
    before adding it rounds twice.
    """
    for b, lr in zip(buckets, lrs):
        group = b.group
        lr = lr.to(b.params[0].device)
        beta1 = group["betas"][0]
        direction = b.states["m"] if beta1 > 0 else b.grads
        dtype = direction[0].dtype
        # lr / ((1 - beta1^k) * factor): the whole per-tensor multiplier of direction / d,
        # applied with value=-1 (a sign flip is exact: the same bits as dividing by -scale)
        scale = lr.to(dtype)
        if beta1 > 0:
            # from advance_moments where it has it, in the counts' dtype: taken where that
            # is the step's dtype (a bf16 state computes it in bf16, from bf16 counts)
            bias1 = b.momentum_bias
            if bias1 is None or bias1.dtype != dtype:
                bias1 = 1.0 - beta1 ** torch.stack(b.states["step"]).to(dtype)
            scale = scale / bias1
        scale, low, target = _per_tensor_scales_and_target(b, scale)
        if group["weight_decay"] != 0 and group["decouple"]:
            torch._foreach_mul_(target, (1.0 - lr * group["weight_decay"]).to(target[0].dtype))
        if b.denoms is None:
            torch._foreach_addcmul_(target, _like(direction, target), _like(scale, target),
                                    value=-1.0)
        else:
            torch._foreach_div_(b.denoms, scale)
            torch._foreach_addcdiv_(target, _like(direction, target), _like(b.denoms, target),
                                    value=-1.0)
        if low:
            torch._foreach_copy_(b.params, target)


def apply_schedule_free_step(buckets: list[Bucket], lrs: list[Tensor], weight: Tensor) -> None:
    """The schedule-free iteration (Defazio et al. 2024) in the scaled space, with ``lrs[i]``
    bucket i's Adam-equivalent lr ``eta`` and ``weight`` this step's averaging weight ``c``.

    The parameters hold ``y``; ``z`` is plain SGD in the scaled space (no momentum) and the
    average ``x`` is never stored: ``y = (1 - beta1) z + beta1 x`` recovers it
    (docs/algorithms.md §4h). With ``D = g / a + wd y`` (the decoupled decay taken at y):

        z <- z - eta D
        x <- (1 - c) x + c z
        y <- (1 - beta1) z + beta1 x  =  lerp(y - eta (1 - beta1) D, z, c)

    (the last form from the two above, so that the update needs no copy of y or x).
    Bias correction and the factor of a are folded into the denominators (consumed).
    """
    for b, lr in zip(buckets, lrs):
        group = b.group
        lr = lr.to(b.params[0].device)
        beta1 = group["betas"][0]
        scale, low, target = _per_tensor_scales_and_target(b, lr.to(b.grads[0].dtype))
        z = _like(b.states["z"], target)  # a float32 copy of a low-precision state: written back
        decay = group["weight_decay"] if group["decouple"] else 0.0
        if decay != 0:  # z -= eta wd y, with y before this step
            torch._foreach_addcmul_(z, target, [(-decay * lr).to(z[0].dtype)] * len(z))
        if b.denoms is None:
            torch._foreach_addcmul_(z, _like(b.grads, z), _like(scale, z), value=-1.0)
        else:
            torch._foreach_div_(b.denoms, scale)
            torch._foreach_addcdiv_(z, _like(b.grads, z), _like(b.denoms, z), value=-1.0)
        if decay != 0:
            torch._foreach_mul_(target, (1.0 - (1.0 - beta1) * decay * lr).to(target[0].dtype))
        if b.denoms is None:
            torch._foreach_addcmul_(target, _like(b.grads, target), _like(scale, target),
                                    value=-(1.0 - beta1))
        else:
            torch._foreach_addcdiv_(target, _like(b.grads, target), _like(b.denoms, target),
                                    value=-(1.0 - beta1))
        # y <- y + c (z - y); c as a list of 0-d tensors: the overload taking one tensor
        # reads it on the host (.item(): a sync, and an error on meta tensors). lerp wants
        # one dtype per pair: a bucket of float32 state may hold bf16 parameters beside
        # float32 ones (the first decides `low`), whose z is cast for this
        ends, weights = z, [weight.to(target[0].dtype)] * len(target)
        if any(t.dtype != e.dtype for t, e in zip(target, z)):
            ends = [e.to(t.dtype) for e, t in zip(z, target)]
            weights = [weight.to(t.dtype) for t in target]
        torch._foreach_lerp_(target, ends, weights)
        if z[0] is not b.states["z"][0]:
            torch._foreach_copy_(b.states["z"], z)
        if low:
            torch._foreach_copy_(b.params, target)


def _per_tensor_scales_and_target(b: Bucket, scale: Tensor) -> tuple[list[Tensor], bool, list[Tensor]]:
    """The step's 0-d multiplier per tensor (``scale`` over the scaling's per-tensor factor),
    whether the parameters are low precision, and the tensors to update: float32 copies of
    bf16/fp16 parameters (rounded once, back into them, at the end), else the parameters."""
    if b.factors is not None:
        scale = scale / b.factors.to(scale.dtype)
    if scale.dim() == 0:
        scale = scale.expand(len(b.params))
    low = b.params[0].dtype in (torch.float16, torch.bfloat16)
    target = [p.float() for p in b.params] if low else b.params
    return list(scale.unbind()), low, target


def schedule_free_weight(est: dict[str, Tensor], lr: Tensor) -> Tensor:
    """c_k = w_k / sum of w, w_k = (the largest Adam-equivalent lr so far)^2 (schedule-free
    AdamW's weighting); 0 before the first step that moves (lr 0)."""
    # a new tensor also at the first step: stored as the step's lr itself, the two would
    # alias, and a graph compiled on that step's outputs reads one for the other later
    peak = torch.maximum(est["sf_lr_max"], lr) if "sf_lr_max" in est else lr.clone()
    w = peak * peak
    total_w = est["sf_weight_sum"] + w if "sf_weight_sum" in est else w
    est["sf_lr_max"], est["sf_weight_sum"] = peak, total_w
    positive = total_w > 0
    return torch.where(positive, w / torch.where(positive, total_w, ~positive), positive)


def _like(tensors: list[Tensor], reference: list[Tensor]) -> list[Tensor]:
    """``tensors`` cast to the dtypes of ``reference`` (low-precision params, float32 state)."""
    if tensors[0].dtype == reference[0].dtype:
        return tensors
    return [t.to(r.dtype) for t, r in zip(tensors, reference)]


class ScaledSpaceOptimizer(LRFreeOptimizer):
    """What every PS optimizer shares: the move into the scaled space before its rule
    chooses a step, and the step (plus the iterate average) after it.

    Subclasses set ``_scaling`` and ``_rule_state`` (state tensors of the rule itself).
    """

    _scaling: Scaling
    _rule_state: tuple[str, ...] = ()

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        group0 = self.param_groups[0]
        if group0.get("schedule_free"):  # z replaces the momentum (beta1 > 0 is required)
            return ("z", *self._scaling.state_names, *self._rule_state)
        momentum = ("m",) if group["betas"][0] > 0 else ()
        average = ("x_avg",) if group0["average"] else ()
        return (*momentum, *self._scaling.state_names, *self._rule_state, *average)

    def _state_shape(self, name: str, p: Tensor) -> torch.Size:
        return self._scaling.state_shape(name, p.shape)

    def _initial_state(self, name: str, p: Tensor, dtype: torch.dtype) -> Tensor:
        shape = self._state_shape(name, p)
        if shape != p.shape:  # a factored statistic, or an unused 0-d slot
            return p.new_zeros(shape, dtype=dtype)
        return super()._initial_state(name, p, dtype)

    def _enter_scaled_space(self, buckets: list[Bucket], initial: Callable[..., dict[str, Tensor]]
                            ) -> tuple[dict[str, Tensor], bool, Tensor]:
        """Update the moments, fix N and fill each bucket's denominators; the rule then
        forms g' (:func:`scale_gradients`) or only its norm (:func:`sq_norm_scaled`).

        Returns the estimate, whether this is its first step, and N.
        """
        group0 = self.param_groups[0]
        device, dtype = self._device(), self._scalar_dtype()
        est = self._estimate(initial, device)
        first = "alpha_norm" not in est
        advance_moments(buckets, self._scaling)
        norm = alpha_normaliser(buckets, est, group0["alpha_norm"], first,
                                self._scaling.is_identity, self._reduce, device, dtype)
        if first and getattr(self, "_step_flags", {}).get("all_grads_zero", False):
            # Every gradient was exactly zero (known from the non-finite check's sync): no
            # element is live, and freezing N now would freeze it at eps. The step still
            # counts for the moments; N, G0 and the start wait for the first non-zero
            # gradient. (With nonfinite="unchecked" nothing is read back and N is fixed here.)
            del est["alpha_norm"]
        return est, first, norm

    def _take_step(self, buckets: list[Bucket], est: dict[str, Tensor], step: Tensor,
                   norm: Tensor, average_scale: Tensor) -> None:
        """x <- x - gamma * step * N * m_hat / a for every group, then the average
        (weights (average_scale / gamma)^2 * k^p), and the observable effective_lr."""
        group0 = self.param_groups[0]
        # step * lr * norm once per distinct lr (a list of pairs, not a dict: a scheduler
        # may give lr as a symbolic float under Dynamo); lr = 1 multiplies exactly
        lrs: list[tuple[float, Tensor]] = []

        def effective(lr: float) -> Tensor:
            for known, value in lrs:
                if known == lr:
                    return value
            value = step * norm if lr == 1 else step * lr * norm
            lrs.append((lr, value))
            return value

        if group0.get("schedule_free"):
            weight = schedule_free_weight(est, effective(max(g["lr"] for g in self.param_groups)))
            apply_schedule_free_step(buckets, [effective(b.group["lr"]) for b in buckets], weight)
        else:
            apply_step(buckets, [effective(b.group["lr"]) for b in buckets])
        if group0["average"]:
            averaging.update(est, [b.params for b in buckets],
                             [b.states["x_avg"] for b in buckets], average_scale,
                             group0["average_power"], max(g["lr"] for g in self.param_groups))
        for group in self.param_groups:
            group["effective_lr"] = effective(group["lr"])


def check_fused(opt: LRFreeOptimizer, fused: bool | None) -> bool | None:
    """Validate ``fused=`` (the Triton step of :mod:`lrfree.kernels.triton_step`): True
    where it can never run is an error naming why."""
    check_choice("fused", fused, (None, True, False))
    if fused:
        from lrfree.kernels import triton_step
        reason = triton_step.static_reason(opt, check_params=True)
        if reason is not None:
            raise ValueError(f"fused=True is not supported here: {reason}; use fused=None "
                             "(the kernel where supported) or fused=False")
    return fused


def fused_step(opt: LRFreeOptimizer, buckets: list[Bucket], loss: Tensor | None) -> bool:
    """The dispatch to the fused Triton step: True if it took this step (on CUDA, in
    steady state, where supported), False to take the eager step."""
    # compiled (lrfree.fused): Inductor fuses the eager step; nothing here to trace
    if getattr(opt, "_fused", None) is False or torch.compiler.is_compiling():
        return False
    from lrfree.kernels import triton_step
    return triton_step.try_step(opt, buckets, loss)
