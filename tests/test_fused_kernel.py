"""lrfree.fused(opt, kernel="cpp"): the C++ CPU step of PSDASGD and PSSPS.

- The kernel's trajectory equals the eager (foreach) step's over 10 steps of a model of a
  dozen tensors in two param groups (lr 1.0 and 0.5, weight decay on one, an LR scheduler):
  parameters, every state tensor and the estimate's scalars. Not bitwise: the kernel adds
  its sums in double in another order. float32: 2e-6 relative asked (the eager foreach vs
  per-tensor tolerance of test_speed_paths.py); measured at most 6.5e-7 (parameters of
  PSSPS with beta1 = 0; 1.1e-7 to 3.5e-7 in the other cases) over the cases below, growing
  with the steps as the trajectories drift apart. float64: 1e-12 asked, measured at most
  2.5e-15.
- Unsupported steps (other scalings and options, bf16, strided gradients, the first step)
  take the eager step: bitwise the eager result, and the kernel is not called.
- Host syncs (Tensor -> Python conversions, as in test_speed_paths.py): 1 per step with the
  default non-finite check, 0 with nonfinite="unchecked"; a step with a non-finite gradient
  or loss is skipped (or raises), as in eager.

- A checkpoint loaded into a new kernel optimizer continues bitwise as the uninterrupted run.
- Zero first gradients: the kernel waits (eager steps) until N and G0 are fixed.

The generic (non-AVX) build was checked by running this file with
ATEN_CPU_CAPABILITY=default. The whole file is skipped when the kernel cannot be built (no
C++ compiler or ninja). The first run builds it (~30 s on a loaded 2-core machine; cached
in torch's extension directory after that).
"""
from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from test_speed_paths import MixedNet, assert_host_syncs_per_step, data, relative
from torch import nn
from torch.utils.cpp_extension import is_ninja_available

import lrfree
from lrfree import kernels
from problems import PSDASGDMomentum, optimizer_class

_compiler = os.environ.get("CXX", "c++")
kernels.ensure_ninja_on_path()
if not (shutil.which(_compiler) and is_ninja_available()):  # pragma: no cover - the machine
    pytest.skip(f"the C++ kernel cannot be built here: no C++ compiler ({_compiler}) or no "
                "ninja (pip install lrfree[kernels])", allow_module_level=True)
kernels.load()  # with a compiler, a failed build is an error, not a skip

RTOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def groups(net: nn.Module) -> list[dict]:
    params = list(net.parameters())
    return [{"params": params[:5], "lr": 1.0, "weight_decay": 0.1},
            {"params": params[5:], "lr": 0.5}]


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many steps the kernel took."""
    calls = []
    run = kernels.run

    def counted(*args, **kwargs):
        calls.append(1)
        return run(*args, **kwargs)

    monkeypatch.setattr(kernels, "run", counted)
    return calls


def train_pair(name, options, dtype=torch.float32, steps=10, nan_at=None, make_net=MixedNet,
               make_groups=groups, nan_value=float("nan"), nan_loss_at=None):
    """The same model trained by the eager optimizer and by its kernel="cpp" version."""
    cls = optimizer_class(name)
    net_e = make_net().to(dtype)
    net_k = copy.deepcopy(net_e)
    opt_e = cls(make_groups(net_e), **options)
    opt_k = lrfree.fused(cls(make_groups(net_k), **options), kernel="cpp")
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1.0 + 0.2 * k))
              for o in (opt_e, opt_k)]
    for k in range(steps):
        for net, opt, sched in ((net_e, opt_e, scheds[0]), (net_k, opt_k, scheds[1])):
            x, y = data(k % 2)  # two batches: correlated gradients, so the estimate grows
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            if k == nan_at:
                list(net.parameters())[2].grad.view(-1)[-1] = nan_value
            opt.step(loss=loss.detach() * (float("nan") if k == nan_loss_at else 1.0))
            sched.step()
    return net_e, opt_e, net_k, opt_k


def max_differences(net_e, opt_e, net_k, opt_k) -> dict[str, float]:
    worst: dict[str, float] = {}
    for pe, pk in zip(net_e.parameters(), net_k.parameters()):
        worst["param"] = max(worst.get("param", 0.0), relative(pk, pe))
        assert opt_e.state[pe].keys() == opt_k.state[pk].keys()
        for key, value in opt_e.state[pe].items():
            worst[key] = max(worst.get(key, 0.0), relative(opt_k.state[pk][key], value))
    est_e, est_k = opt_e.param_groups[0]["estimate"], opt_k.param_groups[0]["estimate"]
    assert est_e.keys() == est_k.keys()
    for key, value in est_e.items():
        worst[f"estimate {key}"] = relative(est_k[key], value)
    for ge, gk in zip(opt_e.param_groups, opt_k.param_groups):
        for key in ("effective_lr", "d", "d_hat", "polyak_step"):
            if key in ge:
                worst[f"group {key}"] = max(worst.get(f"group {key}", 0.0),
                                            relative(torch.as_tensor(gk[key]),
                                                     torch.as_tensor(ge[key])))
    return worst


CASES = [
    # d0_lr small: the estimate grows during the run (d_hat > d), so the growth is compared
    ("PSDASGD", {"d0_lr": 1e-8}),
    ("PSDASGD", {"d0_lr": 1e-8, "betas": (0.0, 0.99), "eps": 1e-6}),
    ("PSDASGD", {"d0_lr": 1e-8, "decouple": False, "d_coef": 0.5, "growth_rate": 1.5}),
    ("PSDASGD", {"d0": 1e-3}),
    ("PSSPS", {}),
    ("PSSPS", {"betas": (0.0, 0.99), "c": 0.3, "cap_growth": 1.2}),
    ("PSSPS", {"decouple": False, "f_star": 0.1}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_kernel_matches_eager(name, options, dtype, kernel_calls):
    net_e, opt_e, net_k, opt_k = train_pair(name, options, dtype)
    assert len(kernel_calls) == 9, "the kernel did not take the steps after the first"
    worst = max_differences(net_e, opt_e, net_k, opt_k)
    bad = {k: f"{v:.1e}" for k, v in worst.items() if v > RTOL[dtype]}
    assert not bad, bad
    # not vacuous: the parameters moved, and PSDASGD's estimate grew in the kernel steps
    moved = max(relative(p, p0) for p, p0 in zip(net_k.parameters(), MixedNet().parameters()))
    assert moved > 1e-3
    if name == "PSDASGD" and "d0" not in options:
        est = opt_k.param_groups[0]["estimate"]
        start = options["d0_lr"] * torch.sqrt(est["live_count"])
        assert float(est["d"]) > 2 * float(start)


@pytest.mark.parametrize("name,bad", [("PSDASGD", "nan"), ("PSDASGD", "inf"),
                                      ("PSSPS", "-inf"), ("PSSPS", "loss")])
def test_nonfinite_step_is_skipped(name, bad, kernel_calls):
    """A non-finite gradient (the C++ check) or loss: the step is skipped by both, as in
    eager; with nonfinite="raise" it raises before anything changes."""
    options = {"d0_lr": 1e-8} if name == "PSDASGD" else {}
    value = float(bad) if bad != "loss" else 0.0
    nan_at = 3 if bad != "loss" else None
    if bad == "loss":
        options = {}
    net_e, opt_e, net_k, opt_k = train_pair(
        name, options, steps=6, nan_at=nan_at, nan_value=value,
        nan_loss_at=3 if bad == "loss" else None)
    assert opt_e.param_groups[0]["skipped_steps"] == opt_k.param_groups[0]["skipped_steps"] == 1
    assert len(kernel_calls) == 4
    assert max(max_differences(net_e, opt_e, net_k, opt_k).values()) <= RTOL[torch.float32]
    net = MixedNet()
    opt = lrfree.fused(optimizer_class(name)(groups(net), nonfinite="raise"), kernel="cpp")
    for k in range(3):
        x, y = data(k)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        if k == 2:
            net.fc.weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in net.parameters()]
            with pytest.raises(lrfree.NonFiniteError):
                opt.step(loss=loss.detach())
            assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
        else:
            opt.step(loss=loss.detach())


@pytest.mark.parametrize("name", ["PSDASGD", "PSSPS"])
@pytest.mark.parametrize("nonfinite,expected", [("skip", 1), ("unchecked", 0)])
def test_host_syncs_per_step(name, nonfinite, expected, kernel_calls):
    net = MixedNet()
    opt = lrfree.fused(optimizer_class(name)(groups(net), nonfinite=nonfinite), kernel="cpp")
    assert_host_syncs_per_step(net, opt, 4, expected)  # the eager first step included
    assert len(kernel_calls) == 3


class StridedNet(nn.Module):
    """A weight stored transposed: it and its gradient are not contiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.weight = nn.Parameter(torch.randn(8, 5).t() * 0.3)
        self.bias = nn.Parameter(torch.zeros(5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed(tokens).mean(1)) @ self.weight.t() + self.bias


FALLBACKS = [
    ("PSDASGD", {"scaling": "amsgrad"}, torch.float32, MixedNet),
    ("PSDASGD", {"scaling": "rmsprop"}, torch.float32, MixedNet),
    ("PSDASGD", {"alpha_norm": "running"}, torch.float32, MixedNet),
    ("PSDASGD", {"average": True}, torch.float32, MixedNet),
    ("PSDASGD", {}, torch.bfloat16, MixedNet),
    ("PSDASGD", {}, torch.float32, StridedNet),
    ("PSSPS", {"scaling": "adafactor"}, torch.float32, MixedNet),
    ("PSSPS", {"alpha_norm": "none"}, torch.float32, MixedNet),
    ("PSSPS", {"average": True}, torch.float32, MixedNet),
]


@pytest.mark.parametrize("name,options,dtype,make_net", FALLBACKS,
                         ids=[f"{n}-{o}-{d}-{m.__name__}" for n, o, d, m in FALLBACKS])
def test_unsupported_steps_are_exactly_eager(name, options, dtype, make_net, kernel_calls):
    if make_net is StridedNet:
        assert not StridedNet().weight.is_contiguous()
    net_e, opt_e, net_k, opt_k = train_pair(
        name, options, dtype, steps=5, make_net=make_net,
        make_groups=lambda net: groups(net) if make_net is MixedNet else
        [{"params": list(net.parameters())[:2], "weight_decay": 0.1},
         {"params": list(net.parameters())[2:], "lr": 0.5}])
    if make_net is StridedNet:
        assert not net_k.weight.grad.is_contiguous()
    assert not kernel_calls
    for pe, pk in zip(net_e.parameters(), net_k.parameters()):
        assert torch.equal(pe, pk)
        for key, value in opt_e.state[pe].items():
            assert torch.equal(opt_k.state[pk][key], value), key


def test_first_gradient_of_a_parameter_is_an_eager_step(kernel_calls):
    """A parameter whose first gradient arrives late has no state yet: that step is eager
    (it creates the state), the next ones use the kernel again."""
    net_e = MixedNet()
    net_k = copy.deepcopy(net_e)
    opt_e = PSDASGDMomentum(groups(net_e), d0_lr=1e-8)
    opt_k = lrfree.fused(PSDASGDMomentum(groups(net_k), d0_lr=1e-8), kernel="cpp")
    for k in range(5):
        for net, opt in ((net_e, opt_e), (net_k, opt_k)):
            x, y = data(k)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if k < 2:
                net.scale.grad = None
            opt.step()
    assert len(kernel_calls) == 3  # steps 1, 3, 4 (0 and 2 create state)
    for pe, pk in zip(net_e.parameters(), net_k.parameters()):
        assert relative(pk, pe) <= RTOL[torch.float32]


def test_options_and_build_error(monkeypatch):
    opt = lrfree.PSDASGD(MixedNet().parameters())
    with pytest.raises(ValueError, match="kernel="):
        lrfree.fused(opt, kernel="triton")
    with pytest.raises(ValueError, match="torch.compile options"):
        lrfree.fused(opt, kernel="cpp", backend="eager")

    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("c++: command not found")

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler.*lrfree\[kernels\]"):
        lrfree.fused(lrfree.PSDASGD(MixedNet().parameters()), kernel="cpp")


@pytest.mark.parametrize("name", ["PSDASGD", "PSSPS"])
def test_resume_from_state_dict(name, kernel_calls):
    """A checkpoint taken mid-run and loaded into a new kernel optimizer continues exactly
    (bitwise) as the uninterrupted run: the kernel keeps no state of its own."""
    def run(net, opt, steps):
        for k in steps:
            x, y = data(k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step(loss=loss.detach())

    cls = optimizer_class(name)
    net_a = MixedNet()
    net_b = copy.deepcopy(net_a)
    opt_a = lrfree.fused(cls(groups(net_a)), kernel="cpp")
    run(net_a, opt_a, range(6))
    opt_b = lrfree.fused(cls(groups(net_b)), kernel="cpp")
    run(net_b, opt_b, range(3))
    saved = copy.deepcopy(opt_b.state_dict())
    opt_c = lrfree.fused(cls(groups(net_b)), kernel="cpp")
    opt_c.load_state_dict(saved)
    run(net_b, opt_c, range(3, 6))
    assert len(kernel_calls) == 5 + 2 + 3
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("name", ["PSDASGD", "PSSPS"])
@pytest.mark.parametrize("nonfinite", ["skip", "unchecked"])
def test_zero_gradients_first(name, nonfinite, kernel_calls):
    """Exactly zero gradients at the first two steps: N, G0 and the start wait for the
    first non-zero gradient (with the check; unchecked, N is fixed at once); the kernel
    takes over once they are fixed and the result is the eager one."""
    cls = optimizer_class(name)
    net_e = MixedNet()
    net_k = copy.deepcopy(net_e)
    opt_e = cls(groups(net_e), nonfinite=nonfinite)
    opt_k = lrfree.fused(cls(groups(net_k), nonfinite=nonfinite), kernel="cpp")
    for k in range(6):
        for net, opt in ((net_e, opt_e), (net_k, opt_k)):
            x, y = data(k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            if k < 2:
                for p in net.parameters():
                    p.grad.zero_()
            opt.step(loss=loss.detach())
    # eager while N (and PSDASGD's G0) are not fixed; PSSPS unchecked fixes N at step 0
    assert len(kernel_calls) == (5 if (name, nonfinite) == ("PSSPS", "unchecked") else 3)
    assert max(max_differences(net_e, opt_e, net_k, opt_k).values()) <= RTOL[torch.float32]


def test_pip_ninja_is_put_on_path(monkeypatch):
    """A venv's python run without activating the venv does not have the pip-installed
    ninja on PATH (CI runs `.venv/bin/python -m pytest`); the loader adds its directory."""
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", "/nonexistent")
    kernels.ensure_ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
    assert is_ninja_available()
