"""Machinery shared by every lrfree optimizer: validation, loss handling, gathering the
tensors of a step into buckets, the non-finite policy, and where the global estimate lives.

The learning-rate-free estimate is global (one scalar set over all parameter groups). It
lives in the first parameter group under ``"estimate"`` as 0-d tensors on the parameters'
device, so it travels with ``state_dict()``, needs no host round trip to update, and
survives frameworks that only know per-parameter state.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from lrfree import distributed
from lrfree.averaging import AveragingMixin

NONFINITE_POLICIES = ("skip", "raise", "unchecked")
LossLike = Tensor | float | None


class NonFiniteError(FloatingPointError):
    """Raised with ``nonfinite="raise"`` when a gradient or the loss is inf/NaN."""


def check_positive(name: str, value: float, *, allow_zero: bool = False,
                   allow_inf: bool = False) -> None:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    # inf is a valid bound (growth_rate) but never a valid size: it ends as inf/NaN params
    numeric = numeric and (allow_inf or value != float("inf"))
    # value == value is False only for NaN; math.isnan would break a torch.compile graph
    # when a scheduler's lr reaches here as a symbolic float
    ok = numeric and value == value and (value >= 0 if allow_zero else value > 0)  # noqa: PLR0124
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        finite = "" if allow_inf else "finite "
        raise ValueError(f"{name}={value!r} is invalid: it must be a {finite}number {bound}")



def check_polyak_options(c: float, f_star: float, delta: float, cap_start: float,
                         cap_growth: float) -> None:
    """Validate the Polyak step's options (PS-SPS, SPS, the optax port)."""
    check_positive("c", c)
    if not isinstance(f_star, (int, float)) or not math.isfinite(f_star):
        raise ValueError(f"f_star={f_star!r} is invalid: it must be a finite number")
    check_positive("delta", delta, allow_zero=True)
    check_positive("cap_start", cap_start)
    check_positive("cap_growth", cap_growth)
    if cap_growth < 1:
        raise ValueError(f"cap_growth={cap_growth!r} is invalid: it must be >= 1")


# PS-DA-SGD's default start, as the first effective lr in Adam-lr units (issue 17: measured
# against 1e-6 and 1e-5 at both budgets, docs/algorithms.md §4e)
DEFAULT_START_LR = 1e-4
# d may grow at most x1.5 per step (issue 17, docs/algorithms.md §4g): a faster climb
# overshoots and the estimate feeds on its own overshoot
DEFAULT_GROWTH_RATE = 1.5


def check_dadapt_start(d0: float | None, d0_lr: float | None, d_coef: float,
                       growth_rate: float) -> tuple[float, float | None]:
    """Validate PS-DA-SGD's estimate options; returns (d0, d0_lr) with the default start
    resolved: d0_lr = DEFAULT_START_LR (Adam-lr units) unless d0 (scaled units) is given."""
    if d0 is not None and d0_lr is not None:
        raise ValueError(f"d0={d0!r} and d0_lr={d0_lr!r} both set the start of the "
                         "estimate: give one (d0_lr in Adam-lr units, d0 in scaled units)")
    if d0 is None:
        d0_lr = DEFAULT_START_LR if d0_lr is None else d0_lr
        check_positive("d0_lr", d0_lr)
        d0 = 1e-6  # replaced by d0_lr's start at the first non-zero gradient
    else:
        check_positive("d0", d0)
    check_positive("d_coef", d_coef)
    check_positive("growth_rate", growth_rate, allow_inf=True)
    if growth_rate < 1:
        raise ValueError(f"growth_rate={growth_rate!r} is invalid: it must be >= 1")
    return d0, d0_lr

def check_unit_interval(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: it must be in [0, 1)")


def check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas={betas!r} is invalid: pass a pair (beta1, beta2), e.g. (0.9, 0.999)")
    check_unit_interval("betas[0]", betas[0])
    check_unit_interval("betas[1]", betas[1])
    return float(betas[0]), float(betas[1])


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: use one of {', '.join(map(repr, choices))}")


def check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        raise ValueError(
            "lr must be a Python float (it is a multiplier on the estimated step); "
            "got a Tensor: pass float(lr)"
        )
    check_positive("lr", lr, allow_zero=True)


# Options a param group may override, and their checks (the defaults go through them too).
GROUP_CHECKS: dict[str, Callable[[Any], Any]] = {
    "lr": check_lr,
    "betas": check_betas,
    "eps": lambda v: check_positive("eps", v, allow_zero=True),
    "weight_decay": lambda v: check_positive("weight_decay", v, allow_zero=True),
    "momentum": lambda v: check_unit_interval("momentum", v),
    # global options (read from the first group) must still be valid wherever they appear
    **{name: (lambda n: lambda v: check_positive(n, v))(name)
       for name in ("c", "cap_start", "d0", "d_coef", "reps_rel")},
    "delta": lambda v: check_positive("delta", v, allow_zero=True),
}


@dataclass
class Bucket:
    """The tensors of one parameter group that share a device and dtype.

    ``grads`` are in the state dtype (a cast copy for low-precision parameters) and
    never alias ``p.grad`` once modified (coupled weight decay works on a copy).
    """

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    states: dict[str, list[Tensor]] = field(default_factory=dict)
    #: the parameters as the optimizer knows them (state keys); ``params`` holds their
    #: local shards when they are DTensors
    keys: list[Tensor] = field(default_factory=list)
    #: a_k of the scaling as ``factors[i] * denoms[i]`` (``factors``: a 1-d tensor, one
    #: value per tensor, None: 1; denoms None for the identity scaling), so per-tensor
    #: constants cost no pass over the elements
    denoms: list[Tensor] | None = None
    factors: Tensor | None = None
    #: the scaled gradient g' = g / alpha as ``scaled_coefs[i] * scaled[i]`` (None: 1)
    scaled: list[Tensor] = field(default_factory=list)
    scaled_coefs: Tensor | None = None
    #: this step's momentum bias corrections 1 - beta1^k per tensor, computed once with the
    #: second moment's (scaling.bias_correction_vectors) and reused by the step (None: not
    #: computed this step)
    momentum_bias: Tensor | None = None

    def split(self) -> list["Bucket"]:
        """One bucket per tensor: the per-tensor (non-foreach) execution path."""
        return [
            Bucket(self.group, [p], [g], {k: [v[i]] for k, v in self.states.items()},
                   [self.keys[i]])
            for i, (p, g) in enumerate(zip(self.params, self.grads))
        ]


def dots(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """The 1-d tensor of <xs[i], ys[i]> (one read of each, no host sync).

    Compiled, a sum of products: Inductor fuses it with the loop that computes its inputs,
    where ``dot`` (a library call) would make it write them out first.
    """
    if torch.compiler.is_compiling():
        return torch.stack([(x * y).sum() for x, y in zip(xs, ys)])
    return torch.stack([torch.dot(flat(x), flat(y)) for x, y in zip(xs, ys)])


def flat(x: Tensor) -> Tensor:
    """``x.reshape(-1)``, without the call (a dispatch) where ``x`` is already 1-d."""
    return x if x.dim() == 1 else x.reshape(-1)


def sq_norms(xs: list[Tensor]) -> Tensor:
    """The 1-d tensor of ||xs[i]||^2 (one multi-tensor kernel; compiled, as :func:`dots`)."""
    if torch.compiler.is_compiling():
        return torch.stack([(x * x).sum() for x in xs])
    return torch.stack(torch._foreach_norm(xs, 2)) ** 2


def sum_dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_i <xs[i], ys[i]> as a 0-d tensor (no host sync)."""
    return dots(xs, ys).sum()


def sum_sq(xs: list[Tensor]) -> Tensor:
    return sum_dot(xs, xs)


def total(parts: list[Tensor], device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """Sum 0-d tensors that may sit on several devices, onto ``device`` (0 for none)."""
    if not parts:
        return torch.zeros((), device=device, dtype=dtype or torch.float32)
    if len(parts) == 1:  # the sum of one value is that value: no stack and sum kernels
        return parts[0].to(device, dtype or parts[0].dtype)
    return torch.stack([p.to(device, dtype or p.dtype) for p in parts]).sum()


def real_view(t: Tensor) -> Tensor:
    """A complex tensor as its real view (last dim 2: real, imaginary), as torch.optim.Adam
    steps it: the optimizer sees the real and imaginary parts as separate elements, so every
    norm and dot product of the estimate is that of the real vector space R^2n."""
    return torch.view_as_real(t) if t.is_complex() else t


def as_counter(value: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A counter or scalar of the state as a 0-d tensor on ``device``: a checkpoint may hold
    a Python number (torch.optim accepts one for ``step``) or a tensor on another device."""
    if isinstance(value, Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device, dtype=dtype)
    raise TypeError(f"optimizer state holds {type(value).__name__} {value!r} where a number "
                    "or a 0-d tensor is expected: load a state_dict saved by this optimizer")


def _max_abs(xs: list[Tensor]) -> Tensor:
    """max_i max |xs[i]| as a 0-d tensor (NaN if any element is NaN)."""
    if xs[0].device.type == "cpu":
        return torch.stack([t for x in xs for t in torch.aminmax(x)]).abs().max()
    return torch.stack(torch._foreach_norm(xs, float("inf"))).max()


#: tensor types that are never DTensors (their local tensor is themselves)
_PLAIN = (Tensor, torch.nn.Parameter)
_LOW = (torch.float16, torch.bfloat16)


class LRFreeOptimizer(AveragingMixin, torch.optim.Optimizer):
    """Base class: subclasses declare their state tensors and implement ``_update``."""

    #: Polyak methods need the mini-batch loss at every step
    needs_loss = False

    def __init__(self, params: Any, defaults: dict[str, Any], *, foreach: bool | None,
                 nonfinite: str, state_dtype: str, process_group: Any = None,
                 loss_group: Any = "auto") -> None:
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        check_choice("state_dtype", state_dtype, ("float32", "param"))
        check_choice("foreach", foreach, (None, True, False))
        # the class name travels with state_dict, so a checkpoint of another optimizer is
        # recognised when it is loaded
        defaults = dict(defaults, effective_lr=0.0, optimizer=type(self).__name__)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_lr(group["lr"])
        self._foreach = foreach
        self._nonfinite = nonfinite
        # set by each checked step (_finite): whether every gradient was exactly zero. A dict
        # entry, not an attribute: Dynamo (torch 2.11) cannot trace setting an attribute on
        # the optimizer after the check's graph break, and can trace a dict update.
        self._step_flags = {"all_grads_zero": False}
        self._state_dtype = state_dtype
        # Configuration, not state: which group the parameters are sharded over.
        self._shard_group = distributed.shard_group(
            [p for g in self.param_groups for p in g["params"]], process_group)
        self._loss_group = distributed.check_loss_group(loss_group)

    # ------------------------------------------------------ copy and pickle
    def __getstate__(self) -> dict[str, Any]:
        """torch keeps only defaults, state and param_groups; the options held as
        attributes must travel too, or a deep copy (or an unpickled optimizer) fails at its
        first step. A process group cannot be copied: the copy finds the group of DTensor
        parameters again, and an explicit ``process_group=``/``loss_group=`` is an error."""
        state = super().__getstate__()
        params = [p for g in self.param_groups for p in g["params"]]
        explicit = self._shard_group is not distributed.shard_group(params, None) or \
            self._loss_group not in ("auto", None)
        if explicit:
            raise TypeError(
                f"a {type(self).__name__} built with process_group= or loss_group= cannot be "
                "copied or pickled (a process group cannot): build a new one and "
                "load_state_dict(opt.state_dict()) into it")
        state.update({k: v for k, v in vars(self).items()
                      if k in ("_foreach", "_nonfinite", "_state_dtype", "_loss_group",
                               "_scaling", "_fused")})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._step_flags = {"all_grads_zero": False}
        self._shard_group = distributed.shard_group(
            [p for g in self.param_groups for p in g["params"]], None)

    # ----------------------------------------------------------------- hooks
    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _update(self, buckets: list[Bucket], loss: Tensor | None) -> None:
        raise NotImplementedError

    def _resolve_options(self) -> None:
        """Settle options that are decided at the first step (PSDASGD's
        ``schedule_free="auto"``), before any state exists. Default: nothing to settle."""

    # ------------------------------------------------------------ public API
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: LossLike = None) -> Any:
        """One optimization step.

        Pass either ``closure`` (re-evaluates the model and returns the loss) or
        ``loss=`` (a float or a 0-d tensor; no ``.item()`` needed). Returns the loss.
        """
        if self.param_groups[0].get("averaged_in"):
            raise RuntimeError(
                f"{type(self).__name__}.step() called while the averaged weights are in the "
                "model: call opt.train() first (opt.eval() swapped them in)"
            )
        self._resolve_options()
        returned = loss
        if closure is not None:
            if loss is not None:
                raise ValueError("pass either closure or loss=, not both")
            with torch.enable_grad():
                returned = closure()
            loss = returned
        buckets = self._gather()
        if not buckets and self._shard_group is None:
            return returned
        # A sharded rank without gradients still joins every collective, with zeros.
        loss_tensor = self._loss_tensor(loss, self._device())
        if self.needs_loss and loss_tensor is None:
            raise ValueError(
                f"{type(self).__name__} needs the mini-batch loss: call opt.step(loss=loss) "
                "after loss.backward() (a float or a 0-d tensor), or opt.step(closure)"
            )
        if not self._finite(buckets, loss_tensor):
            return returned
        self._init_states(buckets)
        if self._use_foreach(buckets):
            self._update(buckets, loss_tensor)
        else:
            self._update([b for bucket in buckets for b in bucket.split()], loss_tensor)
        return returned

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader with two guards: the state keeps the dtype it was saved in (torch
        casts it to the parameter dtype, which turned the float32 state of bf16 parameters
        into bf16 and broke the next step), and a checkpoint of other parameters (groups of
        equal sizes in another order) or of another optimizer class is a clear error
        before anything changes, not a shape or key error at the next step. Counters saved
        as Python numbers (torch.optim accepts a number for ``step``) become 0-d tensors.

        The hooks keep torch's contract around the guards: load_state_dict pre-hooks run
        first (their edits are what is checked and loaded), post-hooks last (they see the
        final state, not torch's intermediate cast).
        """
        pre = self._optimizer_load_state_dict_pre_hooks
        post = self._optimizer_load_state_dict_post_hooks
        state_dict = state_dict.copy()
        for hook in list(pre.values()):
            result = hook(self, state_dict)
            state_dict = state_dict if result is None else result
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            self._load_checked(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre
            self._optimizer_load_state_dict_post_hooks = post
        for hook in list(post.values()):
            hook(self)

    def _load_checked(self, state_dict: dict[str, Any]) -> None:
        own = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_by = state_dict["param_groups"][0].get("optimizer") if state_dict["param_groups"] \
            else None
        if saved_by != type(self).__name__:
            raise ValueError(
                f"this checkpoint was saved by {saved_by or 'another optimizer'}, not "
                f"{type(self).__name__}: build the optimizer the checkpoint came from")
        # the scalings' states differ in names and shapes (adafactor's are factored)
        saved_scaling = state_dict["param_groups"][0].get("scaling")
        own_scaling = self.param_groups[0].get("scaling")
        if saved_scaling is not None and own_scaling is not None and saved_scaling != own_scaling:
            raise ValueError(
                f"this checkpoint was saved with scaling={saved_scaling!r}, but this optimizer "
                f"uses scaling={own_scaling!r}: build it with the checkpoint's scaling")
        # options added after the checkpoint was written take their defaults
        state_dict = dict(state_dict, param_groups=[
            {**{k: v for k, v in self.defaults.items() if k not in g}, **g}
            for g in state_dict["param_groups"]])
        saved = state_dict["state"]
        for index, p in zip(saved_ids, own):
            for name, value in saved.get(index, {}).items():
                if isinstance(value, Tensor) and value.dim() > 0 and \
                        value.shape != self._state_shape(name, real_view(distributed.local(p))):
                    raise ValueError(
                        f"checkpoint state {name!r} of parameter {index} has shape "
                        f"{tuple(value.shape)} but the parameter in that position has shape "
                        f"{tuple(p.shape)}: build the optimizer with the same parameters and "
                        "param groups, in the same order, as the one that was saved")
        super().load_state_dict(state_dict)
        for index, p in zip(saved_ids, own):
            local = real_view(distributed.local(p))
            for name, value in saved.get(index, {}).items():
                if isinstance(value, Tensor):
                    dtype = self._state_dtype_for(local) \
                        if value.is_floating_point() and name != "step" else value.dtype
                    self.state[p][name] = value.to(local.device, dtype, copy=True)
                else:  # a Python number (torch.optim's non-tensor step)
                    self.state[p][name] = as_counter(value, local.device,
                                                     self._step_dtype(local))
        est = self.param_groups[0].get("estimate") if self.param_groups else None
        if est is not None and own:
            device, dtype = self._device(), self._scalar_dtype()
            for key, value in est.items():
                est[key] = as_counter(value, device, dtype if not isinstance(value, Tensor)
                                      else value.dtype)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, with the per-group values checked like the defaults."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key, check in GROUP_CHECKS.items():
            if key in group:
                check(group[key])

    # -------------------------------------------------------------- helpers
    def _device(self) -> torch.device:
        return distributed.local(self.param_groups[0]["params"][0]).device

    def _step_dtype(self, p: Tensor) -> torch.dtype:
        """The dtype of the per-parameter step count: the state dtype, widened from
        bf16/fp16 (bf16 counts exactly only to 256, and 1 - 0.999**k would round to 0)."""
        dtype = self._state_dtype_for(p)
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _reduce(self, values: list[Tensor]) -> list[Tensor]:
        """Sum scalars over the shard group in one collective (identity when unsharded)."""
        if self._shard_group is None:
            return values
        stacked = distributed.all_reduce_sum(torch.stack(values), self._shard_group)
        return list(stacked.unbind())

    def _use_foreach(self, buckets: list[Bucket]) -> bool:
        if self._foreach is not None:
            return self._foreach
        # torch's own default: multi-tensor kernels wherever every tensor is native.
        return all(p.device.type in ("cuda", "cpu", "xpu", "mps") for b in buckets for p in b.params)

    def _state_dtype_for(self, p: Tensor) -> torch.dtype:
        if self._state_dtype == "float32" and p.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return p.dtype

    def _gather(self) -> list[Bucket]:
        """Buckets of (group, device, dtype) over parameters that have a gradient and lr > 0.

        A group with ``lr == 0`` is frozen: its parameters take no step and do not enter
        the estimate (their state is not even created until the group is unfrozen).
        """
        buckets: list[Bucket] = []
        # (the loop runs once per tensor per step: its per-tensor cost is kept to a few
        # attribute reads, which matters for models of many small tensors)
        widen = self._state_dtype == "float32"
        for group in self.param_groups:
            check_lr(group["lr"])
            if group["lr"] == 0:
                continue
            by_key: dict[tuple[torch.device, torch.dtype], Bucket] = {}
            for key in group["params"]:
                grad = key.grad
                if grad is None:
                    continue
                p = key
                if type(key) not in _PLAIN or type(grad) not in _PLAIN:
                    p, grad = distributed.local(key), distributed.local(grad)
                if grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        "use dense gradients (e.g. nn.Embedding(sparse=False))"
                    )
                # complex parameters are stepped as their real views (as torch.optim.Adam)
                if p.is_complex():
                    p, grad = real_view(p), real_view(grad)
                dtype = p.dtype
                if widen and dtype in _LOW:  # as _state_dtype_for
                    dtype = torch.float32
                where = (p.device, dtype)
                bucket = by_key.get(where)
                if bucket is None:
                    bucket = by_key[where] = Bucket(group, [], [])
                    buckets.append(bucket)
                bucket.params.append(p)
                bucket.grads.append(grad if grad.dtype == dtype else grad.to(dtype))
                bucket.keys.append(key)
        return buckets

    def _loss_tensor(self, loss: LossLike, device: torch.device) -> Tensor | None:
        if loss is None:
            return None
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"loss must be a scalar; got shape {tuple(loss.shape)}: reduce it first "
                    "(e.g. loss.mean())"
                )
            value = distributed.local(loss.detach())
            if value.dim() != 0:
                value = value.reshape(())
            value = value.to(device=device, dtype=self._scalar_dtype())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = torch.tensor(float(loss), device=device, dtype=self._scalar_dtype())
        else:
            raise ValueError(f"loss must be a float or a 0-d tensor; got {type(loss).__name__}")
        if self.needs_loss:
            # each rank computed the loss of its own batch; the step must agree everywhere
            value = distributed.average(
                value, distributed.loss_group(self._shard_group, self._loss_group))
        return value

    def _scalar_dtype(self) -> torch.dtype:
        wide = any(p.dtype in (torch.float64, torch.complex128)
                   for g in self.param_groups for p in g["params"])
        return torch.float64 if wide else torch.float32

    def _finite(self, buckets: list[Bucket], loss: Tensor | None,
                bad: Tensor | None = None) -> bool:
        """Apply the non-finite policy; the one host sync of a step happens here.

        ``bad``: a 0-d tensor, > 0 where a gradient or the loss is not finite, when the
        caller computed it (lrfree.kernels does, in one C++ read of the gradients). Such a
        caller takes only steady-state steps, so ``_step_flags["all_grads_zero"]`` (read by the step
        that fixes N) is left as it is.
        """
        if self._nonfinite == "unchecked":
            return True
        if bad is not None:
            return self._apply_policy(not bool(self._reduce([bad])[0]))
        device = self._device()
        # max |g| cannot overflow where a sum of squares of large finite values could, and
        # NaN propagates. On a CPU it is max(|min g|, |max g|): one vectorised read per
        # tensor, where the inf-norm kernel costs ~4 passes; elsewhere the inf-norm is one
        # multi-tensor kernel. A shard may be empty (FSDP2 splits a small tensor
        # unevenly): it has no maximum.
        peaks = [
            _max_abs(grads).to(device, torch.float32)
            for grads in ([g for g in b.grads if g.numel()] for b in buckets) if grads
        ]
        if self._shard_group is None:
            # no collective: the host reads the largest |g| (inf or NaN where a gradient is
            # not finite, 0 where every gradient is exactly zero) and loss * 0 (0 for a
            # finite loss, NaN otherwise), and decides there: fewer kernels, the same sync
            if not peaks:
                largest = torch.zeros((), device=device)
            else:  # max, not a sum: two large finite peaks must not add up to inf
                largest = peaks[0] if len(peaks) == 1 else torch.stack(peaks).max()
            flags = largest.expand(2) if loss is None else \
                torch.stack([loss.to(device, torch.float32) * 0.0, largest])
        else:
            # The same read tells whether every gradient (on every rank) is exactly zero:
            # such a step must not fix the normaliser N at eps (see _enter_scaled_space).
            largest = torch.stack(peaks).sum() if peaks else torch.zeros((), device=device)
            if loss is not None:
                peaks.append(loss.abs().to(device, torch.float32))
            bad = (~torch.isfinite(torch.stack(peaks))).sum().to(torch.float32) if peaks else \
                torch.zeros((), device=device)
            flags = torch.stack(self._reduce([bad, largest]))
        bad, largest = flags.tolist()  # the one sync
        if self._shard_group is None:
            bad = (0.0 if loss is None else bad) if math.isfinite(largest) else 1.0
        self._step_flags["all_grads_zero"] = largest == 0
        return self._apply_policy(bad == 0.0)

    def _apply_policy(self, finite: bool) -> bool:
        """The non-finite policy, given whether this step's gradients and loss are finite."""
        if finite:
            return True
        if self._nonfinite == "raise":
            raise NonFiniteError(
                f"{type(self).__name__}: non-finite gradient or loss; the step was not taken "
                "and no state changed (nonfinite='skip' skips such steps instead)"
            )
        for group in self.param_groups:
            group["skipped_steps"] = group.get("skipped_steps", 0) + 1
        return False

    def _init_states(self, buckets: list[Bucket]) -> None:
        for bucket in buckets:
            names = self._state_names(bucket.group)
            lists: dict[str, list[Tensor]] = {name: [] for name in (*names, "step")}
            for key, p, g in zip(bucket.keys, bucket.params, bucket.grads):
                state = self.state[key]
                if "step" not in state:
                    state["step"] = torch.zeros((), device=p.device, dtype=self._step_dtype(p))
                    for name in names:
                        state[name] = self._initial_state(name, p, g.dtype)
                elif not isinstance(state["step"], Tensor) or state["step"].device != p.device:
                    # set by hand as a number, or left on another device
                    state["step"] = as_counter(state["step"], p.device, self._step_dtype(p))
                for name in lists:
                    lists[name].append(state[name])
            bucket.states = lists

    def _state_shape(self, name: str, p: Tensor) -> torch.Size:
        """The shape of state ``name`` of parameter ``p`` (a factored scaling's differ)."""
        return p.shape

    def _initial_state(self, name: str, p: Tensor, dtype: torch.dtype) -> Tensor:
        if name in ("x_avg", "z"):  # the average, or schedule-free z: starts at x
            return p.detach().to(dtype, copy=True)
        return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _estimate(self, initial: Callable[[torch.device, torch.dtype], dict[str, Tensor]],
                  device: torch.device) -> dict[str, Tensor]:
        """The global estimate (created on first use), moved to ``device`` if needed."""
        group0 = self.param_groups[0]
        if "estimate" not in group0:
            group0["estimate"] = initial(device, self._scalar_dtype())
        est = group0["estimate"]
        for key, value in est.items():
            if not isinstance(value, Tensor) or value.device != device:
                est[key] = as_counter(value, device, self._scalar_dtype())
        return est
