"""The fused GPU step of :class:`lrfree.PSDASGD` and :class:`lrfree.PSSPS` (Triton).

PS-DA-SGD's step ``lambda_k = d_k gamma / G0`` is known before the step (``d_k`` was fixed
at the end of the previous one), and the sums that give ``d_{k+1}``,

    A = gamma <g', s_{k-1}>      B = gamma^2 ||g'||^2      C = ||s_{k-1}||^2,

are taken before ``s`` moves. So ONE pass does everything: read g, m, v, s, x; update the
moments; form g' = g sqrt(N / a) (plus the decoupled decay u = wd sqrt(N a) x, see
docs/algorithms.md "Weight decay"); emit the block's A, B, C; write s + lambda gamma g' and
x - lambda gamma N m_hat / a: 9 memory operations per element (fused AdamW: 7).
PS-SPS needs this step's ``||g'||^2`` before it can choose its step, so it takes two passes:
v's update with the partial sums of ``||g'||^2`` (read g, v; write v), then, once the
Polyak step is known on the device, m and x (read x, g, m, v; write m, x): 9 as well.

Every pass covers all tensors of a bucket (one param group on one device) in ONE launch:
each program reads which tensor and offset it covers from a block table and the tensor's
addresses from a table of data pointers, as torch's ``multi_tensor_apply`` does. The tables
live on the device and are rebuilt (pinned host memory, non-blocking copy) only when an
address moves; gradients freed by ``zero_grad()`` usually come back at the same addresses.
The per-block partial sums are added by one ``sum``, and the scalar rule (d, r, d_hat,
G0; the Polyak step and its cap) is one single-program launch on 0-d device tensors, in
the eager step's order of operations: no host sync. A step's launches: per bucket the step
counts, the bias-correction powers and the pass (PS-SPS: two); then the sum, the scalar
rule and ``effective_lr``, for all buckets together.

Used automatically on CUDA when triton is importable and the step is supported;
``fused=False`` turns it off, ``fused=True`` makes an unsupported configuration a
ValueError. Supported: ``scaling="adam"``, ``alpha_norm="initial"``, no sharding, float32
or float64 parameters with state of their dtype, contiguous tensors, any betas
(``beta1 = 0`` included), eps, weight decay in both forms, averaging, per-group
``lr``/``betas``/``eps``/``weight_decay``, PSDASGD's Polyak warm-up at once. The steps
up to the one that fixes N (the first, or with the non-finite check the first with a
non-zero gradient) run the eager step. The tests check the kernel against the eager
foreach step (tests/test_triton_step.py: on the CPU through Triton's interpreter,
``TRITON_INTERPRET=1``; on CUDA for real).

bf16/fp16 parameters take the eager step: the kernel could keep them with float32 state,
but Triton's CPU interpreter rounds float32 to bf16 by truncation where a GPU (and torch)
rounds to nearest even, so the tests could not check that path.

One known difference: with ``nonfinite="unchecked"`` a first step whose gradients are all
exactly zero fixes N but not G0 (PS-DA-SGD); the eager step then fixes G0 from the next
gradient and steps at once, the kernel step takes lambda = 0 for that one step (it needs
lambda before it reads the gradient). With the non-finite check such a step fixes nothing.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import torch
from torch import Tensor

from lrfree import averaging
from lrfree.optim._base import Bucket

#: elements per program, and warps per program (8 float32 elements per thread: two
#: 16-byte loads of each tensor in flight)
BLOCK = 1024
NUM_WARPS = 4
#: the tests set this to run the kernels on CPU tensors under TRITON_INTERPRET=1; real
#: use needs CUDA
INTERPRET_ON_CPU = False


@functools.lru_cache(maxsize=None)
def _kernels() -> Any:
    """The kernel module, or None where triton cannot be imported."""
    try:
        from lrfree.kernels import _triton_kernels
    except Exception:  # noqa: BLE001 - any import failure means: no kernel, eager step
        return None
    return _triton_kernels


def available() -> bool:
    """Whether triton can be imported (kernels compile on first use)."""
    return _kernels() is not None


def _on_supported_device(t: Tensor) -> bool:
    return t.device.type == "cuda" or (INTERPRET_ON_CPU and t.device.type == "cpu")


# ----------------------------------------------------------------------- dispatch
def static_reason(opt: Any, check_params: bool = False) -> str | None:
    """Why the kernel cannot run for ``opt``'s options (None: it can, after the first
    step); ``check_params``: also the parameters' devices and dtypes (checked per bucket
    at each step otherwise)."""
    from lrfree import PSDASGD, PSSPS
    from lrfree.scaling import Scaling

    group0 = opt.param_groups[0]
    if type(opt) not in (PSDASGD, PSSPS):
        return f"{type(opt).__name__} is a subclass (the kernel implements PSDASGD and PSSPS)"
    if not available():
        return "triton is not installed (pip install lrfree[kernels])"
    if group0["scaling"] != "adam" or \
            type(opt._scaling).factored_denominators is not Scaling.factored_denominators \
            or type(opt._scaling).denominators is not Scaling.denominators:
        return f"scaling={group0['scaling']!r} (the kernel implements 'adam')"
    if group0["alpha_norm"] != "initial":
        return f"alpha_norm={group0['alpha_norm']!r} (the kernel implements 'initial')"
    if group0.get("schedule_free"):
        return "schedule_free=True (the kernel implements the momentum step)"
    if opt._shard_group is not None:
        return "sharded parameters (process_group= or DTensor parameters)"
    if check_params:
        params = [p for g in opt.param_groups for p in g["params"]]
        if not all(_on_supported_device(p) for p in params):
            return "parameters not on a CUDA device"
        if not all(p.dtype in (torch.float32, torch.float64) for p in params) or \
                len({p.dtype for p in params}) > 1:
            return "parameters not all float32 or all float64 (bf16/fp16 take the eager step)"
    return None


def try_step(opt: Any, buckets: list[Bucket], loss: Tensor | None) -> bool:
    """The hook of ``PSDASGD._update`` / ``PSSPS._update``: take this step with the kernel
    if it can (True), else leave it to the eager step (False). ``fused=True`` turns a
    reason not to into a ValueError; the steps before N is fixed are eager by design."""
    fused = getattr(opt, "_fused", None)
    if fused is False or (fused is None and (opt._foreach is False or not buckets or
                                             not _on_supported_device(buckets[0].params[0]))):
        return False
    if torch.compiler.is_compiling():  # lrfree.fused(opt): Inductor fuses the eager step
        return False
    est = opt.param_groups[0].get("estimate")
    if est is None or "alpha_norm" not in est:
        return False
    reason = static_reason(opt) or _bucket_reason(opt, buckets)
    if reason is not None:
        if fused:
            raise ValueError(f"{type(opt).__name__}(fused=True) cannot take this step: "
                             f"{reason}; use fused=None (the kernel where supported) or False")
        return False
    from lrfree import PSDASGD
    device = est["alpha_norm"].device
    # Triton launches on the current device: make it the parameters'
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if type(opt) is PSDASGD:
            _psdasgd_step(opt, buckets)
        else:
            assert loss is not None
            _pssps_step(opt, buckets, loss)
    return True


def _bucket_reason(opt: Any, buckets: list[Bucket]) -> str | None:
    norm = opt.param_groups[0]["estimate"]["alpha_norm"]  # the scalars' device and dtype
    dtype = norm.dtype
    cache = opt.__dict__.setdefault("_triton_tables", {})
    for index, b in enumerate(buckets):
        if not _on_supported_device(b.params[0]):
            return "parameters not on a CUDA device"
        if b.params[0].device != norm.device:
            return "parameters on several devices"
        if b.params[0].dtype not in (torch.float32, torch.float64):
            return "parameters not float32 or float64 (bf16/fp16 take the eager step)"
        if b.params[0].dtype != dtype:
            return "parameters of mixed dtypes (the estimate's dtype differs)"
        tables = cache.get(index)
        if tables is None:
            tables = cache[index] = _Tables()
        reason = tables.check(b)
        if reason is not None:
            return reason
    return None


# ----------------------------------------------------------------------- tables
class _Tables:
    """One bucket's device tables: the data pointers of x, g, m, v, s ([5, n] int64), and
    which tensor (int32) and offset (int64) each block covers, plus each tensor's length.
    Zero-size tensors are left out (they have nothing to step)."""

    def __init__(self) -> None:
        self.static_key: tuple[int, ...] | None = None
        self.grad_key: tuple[int, ...] | None = None
        self.static_reason: str | None = None
        self.live: list[int] = []
        self.pointers: Tensor | None = None
        self.blocks: tuple[Tensor, Tensor, Tensor] | None = None
        self.n_blocks = 0
        self.aligned = False
        self.option_key: tuple[float, ...] | None = None
        self.options: Tensor | None = None

    def check(self, b: Bucket) -> str | None:
        """Validate ``b`` (cheap when nothing moved) and bring the tables up to date."""
        # rows the kernel does not read (m without momentum, s for PS-SPS) hold the
        # addresses of another row
        m = b.states["m"] if b.group["betas"][0] > 0 else b.params
        s = b.states.get("s", b.states["v"])
        static = [b.params, m, b.states["v"], s]
        # the lengths too: a block table must never outlive its tensors' sizes
        static_key = (*map(Tensor.data_ptr, [t for row in static for t in row]),
                      *map(Tensor.numel, b.params))
        if static_key != self.static_key or self.static_reason is not None:
            self.static_key, self.grad_key = static_key, None
            self.static_reason = _static_tensor_reason(b, static)
            self.live = [i for i, p in enumerate(b.params) if p.numel() > 0]
            self._build_blocks(b)
        if self.static_reason is not None:
            return self.static_reason
        if not all(map(Tensor.is_contiguous, b.grads)):
            return "a gradient is not contiguous"
        grad_key = tuple(map(Tensor.data_ptr, b.grads))
        if grad_key != self.grad_key:
            self.grad_key = grad_key
            rows = [b.params, b.grads, m, b.states["v"], s]
            addresses = [row[i].data_ptr() for row in rows for i in self.live]
            self.aligned = all(a % 16 == 0 for a in addresses)
            self.pointers = _to_device(addresses, torch.int64, b.params[0].device)
        return None

    def _build_blocks(self, b: Bucket) -> None:
        # built on the host (on purpose), then copied pinned and non-blocking
        host = torch.device("cpu")
        numels = torch.tensor([b.params[i].numel() for i in self.live], dtype=torch.int64,
                              device=host)
        counts = (numels + BLOCK - 1) // BLOCK  # blocks per tensor
        which = torch.repeat_interleave(torch.arange(len(numels), device=host), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        start = (torch.arange(len(which), device=host) - first) * BLOCK
        device = b.params[0].device
        self.n_blocks = len(which)
        self.blocks = (_to_device(which, torch.int32, device),
                       _to_device(start, torch.int64, device),
                       _to_device(numels, torch.int64, device))

    def group_options(self, group: dict[str, Any], dtype: torch.dtype,
                      device: torch.device) -> Tensor:
        """gamma, beta1, 1 - beta1, beta2, 1 - beta2, eps, wd on the device (the
        differences taken in double, as the eager step's Python floats); copied again
        only when one changes (a scheduler's lr)."""
        beta1, beta2 = group["betas"]
        key = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        if key != self.option_key or self.options is None:
            self.option_key = key
            self.options = _to_device([group["lr"], beta1, 1.0 - beta1, beta2, 1.0 - beta2,
                                       group["eps"], group["weight_decay"]], dtype, device)
        return self.options


def _static_tensor_reason(b: Bucket, static: list[list[Tensor]]) -> str | None:
    dtype = b.params[0].dtype
    for row in static:
        for t, p in zip(row, b.params):
            if t.dtype != dtype:
                return "state of another dtype than its parameter (state_dtype)"
            if t.shape != p.shape or not t.is_contiguous():
                return "a parameter or state tensor is not contiguous"
    return None


def _to_device(values: list[Any] | Tensor, dtype: torch.dtype, device: torch.device
               ) -> Tensor:
    """A small host list on the device without a host sync (pinned, non-blocking)."""
    host = torch.as_tensor(values, dtype=dtype, device="cpu")
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


# ------------------------------------------------------------------------ steps
def _flags(b: Bucket) -> dict[str, Any]:
    group = b.group
    dtype = b.params[0].dtype
    decay = group["weight_decay"] != 0
    return dict(DTYPE=_kernels().tl.float64 if dtype == torch.float64 else _kernels().tl.float32,
                IS64=dtype == torch.float64, COUPLED=decay and not group["decouple"])


def _powers(b: Bucket, tables: _Tables, options: Tensor) -> Tensor | None:
    """Count the step; [beta1^k; beta2^k] ([2, n]) for each tensor's own count k, as the
    eager ``beta ** torch.stack(steps)`` (the betas as tensors of the state dtype).
    None where the bucket has only zero-size tensors (nothing to launch)."""
    steps = b.states["step"]
    torch._foreach_add_(steps, 1.0)
    if tables.n_blocks == 0:
        return None
    live = steps if len(tables.live) == len(steps) else [steps[i] for i in tables.live]
    betas = options[1:4:2].unsqueeze(1)  # beta1, beta2
    return torch.pow(betas, torch.stack(live).unsqueeze(0))


def _launch_args(tables: _Tables) -> tuple[Any, ...]:
    assert tables.pointers is not None and tables.blocks is not None
    return (tables.pointers, *tables.blocks)


def _rule_options(opt: Any, values: list[float], dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """The scalar rule's constants on the device, copied again only when one changes."""
    key = (tuple(values), dtype, device)
    cached = opt.__dict__.get("_triton_rule")
    if cached is None or cached[0] != key:
        cached = opt._triton_rule = (key, _to_device(values, dtype, device))
    return cached[1]


def _scalars(count: int, like: Tensor) -> list[Tensor]:
    return [torch.empty((), device=like.device, dtype=like.dtype) for _ in range(count)]


def _psdasgd_step(opt: Any, buckets: list[Bucket]) -> None:
    """One steady-state PS-DA-SGD step through the kernels (as PSDASGD._update): the pass
    over the elements (one launch per bucket), one ``sum`` of the blocks' partial sums, and
    the estimate's update (one launch)."""
    kernels = _kernels()
    group0 = opt.param_groups[0]
    est = group0["estimate"]
    norm = est["alpha_norm"]
    device, dtype = norm.device, norm.dtype
    all_tables = [opt._triton_tables[i] for i in range(len(buckets))]
    partials = torch.empty((sum(t.n_blocks for t in all_tables), 5), device=device,
                           dtype=dtype)
    row = 0
    for b, tables in zip(buckets, all_tables):
        options = tables.group_options(b.group, dtype, device)
        powers = _powers(b, tables, options)
        if powers is None:
            continue
        group = b.group
        kernels.psdasgd_kernel[(tables.n_blocks,)](
            *_launch_args(tables), powers, options, est["d"], est["grad_norm0"], norm,
            partials[row:row + tables.n_blocks], len(tables.live),
            MOMENTUM=group["betas"][0] > 0,
            DECOUPLED=group["weight_decay"] != 0 and group["decouple"],
            ALIGNED=tables.aligned, BLOCK=BLOCK, num_warps=NUM_WARPS, **_flags(b))
        row += tables.n_blocks
    sums = partials.sum(0)
    start = group0["d0_lr"] is not None
    growth = group0["growth_rate"]
    rule = _rule_options(opt, [group0["d0_lr"] if start else 0.0, group0["d_coef"],
                               0.0 if math.isinf(growth) else growth], dtype, device)
    d, d_hat, r, g0, step, lam, d_used = _scalars(7, norm)
    kernels.dadapt_kernel[(1,)](
        sums, rule, est["d"], est["grad_norm0"], est["r"], est["step"],
        est["live_count"] if start else est["d"], d, d_hat, r, g0, step, lam, d_used,
        IS64=dtype == torch.float64, START=start,
        DECAYED=any(g["weight_decay"] != 0 and g["decouple"] for g in opt.param_groups),
        GROWTH_BOUND=not math.isinf(growth), num_warps=1)
    est.update(d=d, d_hat=d_hat, r=r, grad_norm0=g0, step=step)
    _finish(opt, buckets, est, lam, norm, d_used)
    for group in opt.param_groups:
        group["d"], group["d_hat"] = d, d_hat


def _pssps_step(opt: Any, buckets: list[Bucket], loss: Tensor) -> None:
    """One steady-state PS-SPS step through the kernels (as PSSPS._update): the first pass
    (v and the partial sums of ||g'||^2) per bucket, one ``sum``, the Polyak step (one
    launch), the second pass (m and x) per bucket."""
    kernels = _kernels()
    group0 = opt.param_groups[0]
    est = group0["estimate"]
    norm = est["alpha_norm"]
    device, dtype = norm.device, norm.dtype
    all_tables = [opt._triton_tables[i] for i in range(len(buckets))]
    partials = torch.empty(sum(t.n_blocks for t in all_tables), device=device, dtype=dtype)
    launched = []
    row = 0
    for b, tables in zip(buckets, all_tables):
        options = tables.group_options(b.group, dtype, device)
        powers = _powers(b, tables, options)
        if powers is None:
            continue
        kernels.pssps_norm_kernel[(tables.n_blocks,)](
            *_launch_args(tables), powers, options, norm,
            partials[row:row + tables.n_blocks], len(tables.live),
            ALIGNED=tables.aligned, BLOCK=BLOCK, num_warps=NUM_WARPS, **_flags(b))
        row += tables.n_blocks
        launched.append((b, tables, options, powers))
    rule = _rule_options(opt, [group0["f_star"], group0["c"], group0["delta"],
                               group0["cap_start"], group0["cap_growth"]], dtype, device)
    eta, cap, floor, step = _scalars(4, norm)
    kernels.polyak_kernel[(1,)](
        partials.sum(), loss.to(device, dtype), rule, est["cap"], est["floor"], est["step"],
        eta, cap, floor, step, IS64=dtype == torch.float64, num_warps=1)
    est.update(eta=eta, cap=cap, floor=floor, step=step)
    for b, tables, options, powers in launched:
        group = b.group
        kernels.pssps_step_kernel[(tables.n_blocks,)](
            *_launch_args(tables), powers, options, eta, norm, len(tables.live),
            MOMENTUM=group["betas"][0] > 0,
            DECOUPLED=group["weight_decay"] != 0 and group["decouple"],
            ALIGNED=tables.aligned, BLOCK=BLOCK, num_warps=NUM_WARPS, **_flags(b))
    _finish(opt, buckets, est, eta, norm, torch.ones_like(eta))
    for group in opt.param_groups:
        group["polyak_step"] = eta


def _finish(opt: Any, buckets: list[Bucket], est: dict[str, Tensor], step: Tensor,
            norm: Tensor, average_scale: Tensor) -> None:
    """The rest of ``ScaledSpaceOptimizer._take_step`` once x has moved: the iterate
    average and the observable effective_lr."""
    group0 = opt.param_groups[0]
    if group0["average"]:
        averaging.update(est, [b.params for b in buckets],
                         [b.states["x_avg"] for b in buckets], average_scale,
                         group0["average_power"], max(g["lr"] for g in opt.param_groups))
    for group in opt.param_groups:
        group["effective_lr"] = step * group["lr"] * norm
