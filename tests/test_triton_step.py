"""The fused Triton step (lrfree.kernels.triton_step) against the eager foreach step, for
PSDASGD (one pass) and PSSPS (two passes).

Without CUDA the kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1,
set here before the kernels are defined; ``INTERPRET_ON_CPU`` lets the dispatch take CPU
tensors, which real use never does). With CUDA they run compiled on the GPU and the CPU
variants are skipped (one process cannot hold both forms of the kernels). Skipped where
triton is not installed.

Tolerance. The kernel performs the eager step's operations in the same order with IEEE
square roots and divisions; what differs is the order of the estimate's sums (per block,
then over blocks, where the eager step sums per tensor), FMA contraction on a GPU and
``1 / sqrt(d)`` for ``rsqrt(d)``: rounding, propagated through the steps. Each tensor is
compared relative to its largest magnitude (an element of s can be the difference of
larger ones). Measured after 12 steps on the CPU interpreter, the largest difference is
~80 units of rounding (float64: 9e-15, float32: 8e-6 relative) in both dtypes alike, as
rounding amplified by the same arithmetic should be; the tests allow 1000 (2.2e-13 and
1.2e-4). A wrong formula (a missing bias correction, the decay in the wrong place, a
mis-indexed tensor or option) moves values by a large fraction of the step.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
pytest.importorskip("triton")

import lrfree  # noqa: E402
from lrfree.kernels import triton_step  # noqa: E402
from problems import PSDASGDMomentum  # noqa: E402

if "lrfree.kernels._triton_kernels" in sys.modules:  # defined earlier under another mode
    importlib.reload(sys.modules["lrfree.kernels._triton_kernels"])
triton_step._kernels.cache_clear()

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(
               not INTERPRETED, reason="CPU tensors need TRITON_INTERPRET=1 (set without CUDA)")),
           pytest.param("cuda", marks=pytest.mark.skipif(
               INTERPRETED or not torch.cuda.is_available(), reason="needs CUDA"))]
# 0-d, one element, zero-size, one block exactly, a block and one, a few blocks + a tail
SHAPES = [(), (1,), (0, 4), (1024,), (1025,), (33, 17), (3, 5, 7), (2100,)]
OPTIMIZERS = {"psdasgd": PSDASGDMomentum, "pssps": lrfree.PSSPS}
ULPS = 1000  # see the module docstring


@pytest.fixture
def device(request, monkeypatch):
    if request.param == "cpu":
        monkeypatch.setattr(triton_step, "INTERPRET_ON_CPU", True)
    return torch.device(request.param)


def _groups(params, variant):
    """Three groups with their own lr, betas and weight decay (both forms, beta1 = 0)."""
    if variant == "one group":
        return [{"params": params}]
    return [{"params": params[:3], "lr": 0.5, "weight_decay": 0.1},
            {"params": params[3:6], "betas": (0.0, 0.99), "weight_decay": 0.05,
             "decouple": False},
            {"params": params[6:], "lr": 2.0, "eps": 1e-6}]


VARIANTS = {
    "groups": {},
    "one group": {"weight_decay": 0.01},
    # the rules' own options (each optimizer takes its own): PSSPS's cap must not bind,
    # or ||g'||^2 would not matter
    "estimate options": {"d_coef": 0.5, "growth_rate": 1.5, "betas": (0.3, 0.9),
                         "c": 0.7, "f_star": 1.0, "cap_start": 1.0, "cap_growth": 2.0},
    "average": {"average": True},
    # PSDASGD's Polyak warm-up at once (warmup_growth=inf) acts on the first, eager step
    "warmup": {"warmup": "polyak"},
}


def _run(name, device, dtype, fused, variant, steps=12, state_dict=None):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)
                                 .to(device, dtype)) for s in SHAPES]
    accepted = inspect.signature(OPTIMIZERS[name]).parameters
    options = {k: v for k, v in VARIANTS[variant].items() if k in accepted}
    if name == "psdasgd":  # a start that moves the parameters within the few steps
        options.setdefault("d0_lr", 1e-2)
    opt = OPTIMIZERS[name](_groups(params, variant), fused=fused, **options)
    calls = []
    real = {"psdasgd": triton_step._psdasgd_step, "pssps": triton_step._pssps_step}[name]

    def spy(*args):
        calls.append(1)
        return real(*args)

    gen = torch.Generator().manual_seed(1)
    base_lr = [g["lr"] for g in opt.param_groups]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_step, f"_{name}_step", spy)
        for k in range(steps):
            if k == steps // 2 and state_dict is not None:  # a checkpoint replaces the state
                state_dict.update(opt.state_dict())
                opt.load_state_dict(state_dict)
            for p in params:  # a fresh gradient tensor each step, as zero_grad() leaves:
                # a noisy quadratic with its minimum at 3 (the estimate has room to grow)
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.grad = (p.detach() - 3.0 + 0.3 * noise.to(device, dtype)).to(dtype)
            for group, lr in zip(opt.param_groups, base_lr):  # a schedule moves lr
                group["lr"] = lr * (1.0 - k / (2 * steps))
            loss = sum(((p.detach().double() - 3.0) ** 2).sum() for p in params).to(dtype)
            opt.step(loss=loss)
    return params, opt, len(calls)


def _tensors(params, opt):
    """Every value the step produces, by name: parameters, state, estimate, effective_lr."""
    out = {}
    for i, p in enumerate(params):
        out[f"x{i}"] = p.detach()
        out.update({f"{k}{i}": v for k, v in opt.state[p].items()})
    out.update({f"estimate {k}": v for k, v in opt.param_groups[0]["estimate"].items()})
    out.update({f"effective_lr {i}": torch.as_tensor(g["effective_lr"])
                for i, g in enumerate(opt.param_groups)})
    return out


def assert_equal_to_rounding(params_k, opt_k, params_e, opt_e, dtype):
    """Each tensor agrees to ULPS units of rounding of its dtype, relative to the tensor's
    largest magnitude (element-wise relative error is meaningless where a value is the
    difference of larger ones, as in s)."""
    kernel, eager = _tensors(params_k, opt_k), _tensors(params_e, opt_e)
    assert kernel.keys() == eager.keys()
    for key, value in eager.items():
        diff = float((kernel[key].double() - value.double()).abs().max()) if value.numel() else 0
        scale = float(value.double().abs().max()) if value.numel() else 0
        bound = ULPS * torch.finfo(dtype).eps * scale
        assert diff <= bound, f"{key}: differs by {diff:.3g}, allowed {bound:.3g}"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_kernel_equals_foreach(device, name, dtype, variant):
    if variant == "warmup" and name == "pssps":
        pytest.skip("PSDASGD's option")
    params_k, opt_k, calls = _run(name, device, dtype, None, variant)
    params_e, opt_e, eager_calls = _run(name, device, dtype, False, variant)
    assert calls == 11 and eager_calls == 0  # every step but the first took the kernel
    assert_equal_to_rounding(params_k, opt_k, params_e, opt_e, dtype)
    start, _, _ = _run(name, device, dtype, False, variant, steps=0)
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(params_k, start)
                if p.numel())
    assert moved > 1e-3  # the parameters moved: the comparison means something
    if name == "psdasgd":
        est = opt_k.param_groups[0]["estimate"]
        assert float(est["d"]) > 2 * float(est["live_count"]) ** 0.5 * 1e-2  # d grew


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_kernel_after_load_state_dict(device, name):
    """A checkpoint loaded mid-run replaces every state tensor: the pointer tables follow."""
    params_k, opt_k, calls = _run(name, device, torch.float64, None, "groups", state_dict={})
    params_e, opt_e, _ = _run(name, device, torch.float64, False, "groups", state_dict={})
    assert calls == 11
    assert_equal_to_rounding(params_k, opt_k, params_e, opt_e, torch.float64)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_unaligned_tensors(device, name):
    """A parameter that is a view at an odd offset: no 16-byte alignment, no vector loads
    (the kernel's other variant), the same step."""
    results = []
    for fused in (None, False):
        buffer = torch.arange(2 * BLOCK_PLUS, device=device, dtype=torch.float32) / BLOCK_PLUS
        params = [torch.nn.Parameter(buffer[1:1 + BLOCK_PLUS]),
                  torch.nn.Parameter(torch.ones(7, device=device))]
        opt = OPTIMIZERS[name](params, fused=fused)
        for k in range(4):
            for p in params:
                p.grad = torch.sin(p.detach() * (k + 1)) + 0.1
            opt.step(loss=1.0) if name == "pssps" else opt.step()
        results.append((params, opt))
    assert not results[0][1]._triton_tables[0].aligned
    assert_equal_to_rounding(*results[0], *results[1], torch.float32)


BLOCK_PLUS = triton_step.BLOCK + 3


# lambda = 0 divides by a zero step multiplier (d / -0 = -inf, m / -inf = -0), as the
# eager step does; numpy, under the interpreter, warns
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_all_zero_first_gradient_unchecked(device):
    """The one documented difference: with nonfinite="unchecked", a first step of zero
    gradients fixes N but not G0. The kernel's next step takes lambda = 0 (it needs lambda
    before it reads the gradient) and fixes G0; the eager step fixes G0 and moves at once."""
    runs = {}
    for fused in (None, False):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 40, device=device, dtype=torch.float64))
        opt = PSDASGDMomentum([p], fused=fused, nonfinite="unchecked")
        xs = []
        for k in range(4):
            p.grad = torch.zeros_like(p) if k == 0 else p.detach() - 0.5
            opt.step()
            xs.append(p.detach().clone())
        runs[fused] = xs, opt.param_groups[0]["estimate"]
    (kernel, est), (eager, _) = runs[None], runs[False]
    assert torch.equal(kernel[1], kernel[0]) and not torch.equal(eager[1], eager[0])
    assert float(est["grad_norm0"]) > 0 and not torch.equal(kernel[2], kernel[1])


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_kernel_not_used_where_unsupported(device):
    for options in ({"scaling": "amsgrad"}, {"alpha_norm": "running"}, {"foreach": False}):
        for name in OPTIMIZERS:
            params = [torch.nn.Parameter(torch.ones(5, device=device))]
            opt = OPTIMIZERS[name](params, **options)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(triton_step, f"_{name}_step", lambda *a: pytest.fail(str(options)))
                for _ in range(3):
                    params[0].grad = torch.ones(5, device=device)
                    opt.step(loss=1.0) if name == "pssps" else opt.step()
    # bf16 parameters (float32 state) take the eager step; fused=True says why
    params = [torch.nn.Parameter(torch.ones(5, device=device, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="fused=True.*bf16"):
        lrfree.PSDASGD(params, fused=True)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_fused_true_names_what_is_unsupported(device):
    p = [torch.nn.Parameter(torch.ones(3, device=device))]
    with pytest.raises(ValueError, match="fused=True.*scaling='amsgrad'"):
        lrfree.PSSPS(p, scaling="amsgrad", fused=True)
    with pytest.raises(ValueError, match="fused=True.*alpha_norm='running'"):
        lrfree.PSDASGD(p, alpha_norm="running", fused=True)
    # a tensor that becomes unsupported mid-run: the step says which and why
    opt = lrfree.PSDASGD(p, fused=True)
    for k in range(2):
        p[0].grad = torch.ones(6, device=device)[::2] if k else torch.ones(3, device=device)
        if k:
            with pytest.raises(ValueError, match="fused=True.*gradient is not contiguous"):
                opt.step()
        else:
            opt.step()


def test_fused_option_checked_on_the_cpu():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="fused=True.*CUDA"):
        lrfree.PSDASGD(p, fused=True)
    with pytest.raises(ValueError, match="fused='yes' is invalid"):
        lrfree.PSSPS(p, fused="yes")
    # the default is the kernel only on CUDA: CPU tensors take the eager step
    opt = lrfree.PSDASGD(p)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_step, "_psdasgd_step", lambda *a: pytest.fail("kernel on CPU"))
        for _ in range(3):
            p[0].grad = torch.ones(3)
            opt.step()


@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_chooses_the_kernel_by_default(name):
    """On CUDA the default (fused=None) takes the kernel and equals fused=False."""
    assert triton_step.available()
    params_k, opt_k, calls = _run(name, torch.device("cuda"), torch.float32, None, "one group")
    params_e, opt_e, _ = _run(name, torch.device("cuda"), torch.float32, False, "one group")
    assert calls == 11
    assert_equal_to_rounding(params_k, opt_k, params_e, opt_e, torch.float32)
