"""The execution paths of a step: foreach == per-tensor, host syncs, torch.compile, state size.

- foreach vs per-tensor, float32, on a model of many tensors of mixed shapes. The two paths
  run the same elementwise kernels, but the global sums are added in a different order
  (per bucket vs per tensor), so the scalars of the estimate, and through them the steps,
  differ by float32 rounding: we ask 2e-6 relative on parameters and state after 6 steps
  (measured: at most 8e-7 after 10 steps, and bitwise equal for 9 of 22 option sets; an
  algorithmic slip, e.g. a missing bias correction, is at the 1e-2 level).
- host syncs counted by patching every Tensor -> Python conversion during ``step()``:
  1 with the default ``nonfinite="skip"``, 0 with ``"unchecked"``.
- torch.compile(fullgraph=True) of the step with nonfinite="unchecked": no graph break, one
  graph per state layout (the state-creating first step and the steady state), no
  recompilation when a scheduler changes ``lr``, and the same trajectory as eager.
- tensor passes per step (benchmarks/step_speed.py's counter), pinned per optimizer.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import lrfree
from problems import optimizer_class

FOREACH_RTOL = 2e-6


class MixedNet(nn.Module):
    """Embedding, conv, norm and linear layers: a dozen tensors of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 12, 3, padding=1)
        self.norm = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 16)
        self.head = nn.Linear(16, 5)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        h = torch.tanh(self.fc(self.norm(h))).mean(1)
        return self.head(h) * self.scale


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 20, (16, 6), generator=g), torch.randint(0, 5, (16,), generator=g)


def groups(net: nn.Module) -> list[dict]:
    params = list(net.parameters())
    return [{"params": params[:5], "lr": 1.0}, {"params": params[5:], "lr": 0.5}]


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, step_fn=None) -> None:
    for step in range(steps):
        x, y = data(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        (step_fn or opt.step)(loss=loss.detach())


CASES = [
    ("PSDASGD", {}),
    ("PSDASGD", {"scaling": "amsgrad"}),
    ("PSDASGD", {"scaling": "rmsprop"}),
    ("PSDASGD", {"scaling": "adagrad"}),
    ("PSDASGD", {"scaling": "none"}),
    ("PSDASGD", {"alpha_norm": "running"}),
    ("PSDASGD", {"betas": (0.0, 0.99)}),
    ("PSDASGD", {"weight_decay": 0.1}),
    ("PSDASGD", {"weight_decay": 0.1, "decouple": False}),
    ("PSDASGD", {"d_coef": 0.3, "growth_rate": 1.05}),
    ("PSDASGD", {"average": True}),
    ("PSDASGD", {"schedule_free": True, "weight_decay": 0.1}),
    ("PSSPS", {}),
    ("PSSPS", {"scaling": "amsgrad"}),
    ("PSSPS", {"alpha_norm": "running"}),
    ("PSSPS", {"weight_decay": 0.1, "decouple": False}),
    ("PSSPS", {"average": True}),
    ("SPS", {}),
    ("PSDoG", {}),
    ("PSDoG", {"average": True, "weight_decay": 0.1}),
    ("DAdaptSGD", {}),
    ("DAdaptSGD", {"momentum": 0.9, "weight_decay": 0.1}),
    ("DAdaptSGD", {"weight_decay": 0.1, "decouple": False}),
]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_foreach_matches_per_tensor(name, options):
    cls = optimizer_class(name)
    net_a = MixedNet()
    net_b = copy.deepcopy(net_a)
    opt_a = cls(groups(net_a), foreach=True, **options)
    opt_b = cls(groups(net_b), foreach=False, **options)
    train(net_a, opt_a, 6)
    train(net_b, opt_b, 6)
    moved = 0.0
    for (label, pa), pb, p0 in zip(net_a.named_parameters(), net_b.parameters(),
                                   MixedNet().parameters()):
        assert pa.dtype == torch.float32
        assert relative(pa, pb) <= FOREACH_RTOL, f"{label}: {relative(pa, pb):.2e}"
        for key, value in opt_b.state[pb].items():
            assert relative(opt_a.state[pa][key], value) <= FOREACH_RTOL, f"{label} {key}"
        moved = max(moved, relative(pa, p0))
    assert moved > 1e-3, "the optimizer did not move: the comparison would be vacuous"
    est_a, est_b = opt_a.param_groups[0]["estimate"], opt_b.param_groups[0]["estimate"]
    for key, value in est_b.items():
        assert relative(est_a[key], value) <= FOREACH_RTOL, f"estimate {key}"


@contextmanager
def count_host_syncs():
    """Count every Tensor -> Python value conversion (the CPU stand-in for CUDA's sync
    debug mode, which only exists for CUDA)."""
    calls: list[str] = []
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def counted(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return saved[name](self, *args, **kwargs)
        return wrapper

    for name in names:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_sync_counter_counts():
    with count_host_syncs() as calls:
        bool(torch.ones(()) > 0)
        torch.ones(()).item()
    assert calls == ["__bool__", "item"]


@pytest.mark.parametrize("name,foreach", [("PSDASGD", True), ("PSDASGD", False), ("PSSPS", True),
                                          ("PSSPS", False), ("PSDoG", True), ("DAdaptSGD", True)])
@pytest.mark.parametrize("nonfinite,expected", [("skip", 1), ("unchecked", 0)])
def test_host_syncs_per_step(name, foreach, nonfinite, expected):
    net = MixedNet()
    options = {"average": True} if name in ("PSDASGD", "PSSPS") else {}
    if name == "PSDASGD" and not foreach:
        options = {"schedule_free": True}
    opt = optimizer_class(name)(groups(net), nonfinite=nonfinite, foreach=foreach, **options)
    assert_host_syncs_per_step(net, opt, 3, expected)


def assert_host_syncs_per_step(net, opt, steps, expected):
    """Train ``steps`` steps (the state-creating first one included) and assert that each
    ``opt.step`` converts exactly ``expected`` tensors to Python values."""
    for step in range(steps):
        x, y = data(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        loss = loss.detach()
        with count_host_syncs() as calls:
            opt.step(loss=loss)
        assert len(calls) == expected, f"step {step}: {calls}"


def compiled_step(opt):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def step(loss):
        opt.step(loss=loss)

    return step, counter


@pytest.mark.parametrize("name,options", [
    ("PSDASGD", {"scaling": "amsgrad", "average": True, "weight_decay": 0.1}),
    ("PSDASGD", {"schedule_free": True, "weight_decay": 0.1}),
    ("PSSPS", {"alpha_norm": "running"}), ("PSDoG", {}), ("DAdaptSGD", {"momentum": 0.9}),
])
def test_compiled_step_has_no_graph_break(name, options):
    """fullgraph=True raises on any graph break; the compiled run must equal eager."""
    torch._dynamo.reset()
    cls = optimizer_class(name)
    net_c, net_e = MixedNet(), MixedNet()
    net_e.load_state_dict(net_c.state_dict())
    opt_c = cls(net_c.parameters(), nonfinite="unchecked", **options)
    opt_e = cls(net_e.parameters(), nonfinite="unchecked", **options)
    step, counter = compiled_step(opt_c)
    for k in range(6):
        for net, opt, fn in ((net_c, opt_c, step), (net_e, opt_e, None)):
            for group in opt.param_groups:  # what a scheduler does between steps
                group["lr"] = 1.0 / (1 + k)
            x, y = data(k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            (fn or opt.step)(loss=loss.detach())
    # one graph creating the state, one for the steady state (lr traced symbolically)
    assert counter.frame_count == 2
    for pc, pe in zip(net_c.parameters(), net_e.parameters()):
        assert relative(pc, pe) <= FOREACH_RTOL


def test_explain_reports_the_sync_as_the_only_break():
    """With the default check the one host sync is the only graph break."""
    net = MixedNet()
    opt = lrfree.PSDASGD(net.parameters())
    train(net, opt, 1)
    x, y = data(1)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(opt.step)()
    assert explanation.graph_break_count == 1
    # the sync is the non-finite check's read-back (tolist of its two reduced numbers)
    reason = explanation.break_reasons[0]
    assert "tolist" in str(reason.reason) and reason.user_stack[-1].name == "_finite"


STATE_SIZES = [
    ("PSDASGD", {}, 3), ("PSDASGD", {"scaling": "amsgrad"}, 4), ("PSDASGD", {"average": True}, 4),
    ("PSDASGD", {"betas": (0.0, 0.999)}, 2), ("PSDASGD", {"schedule_free": True}, 3),
    ("PSSPS", {}, 2), ("PSSPS", {"scaling": "amsgrad"}, 3),
    ("PSSPS", {"average": True}, 3), ("SPS", {}, 0), ("PSDoG", {}, 3),
    ("DAdaptSGD", {}, 2),
]


@pytest.mark.parametrize("name,options,expected", STATE_SIZES,
                         ids=[f"{n}-{o}" for n, o, _ in STATE_SIZES])
def test_state_tensors_per_parameter(name, options, expected):
    """PSDASGD: m, v, s. PSSPS: m, v. AMSGrad adds v_max, averaging adds x_avg. PSDoG: m, v
    and the start x0 (DoG measures the distance from it). DAdaptSGD: s and the anchor x0 (as
    the reference package). Besides them only a 0-d step count."""
    net = MixedNet()
    opt = optimizer_class(name)(net.parameters(), **options)
    train(net, opt, 1)
    for p in net.parameters():
        assert len(opt.state[p]) == expected + 1, f"{name}: {sorted(opt.state[p])}"
        if p.dim() > 0:
            full = [k for k, v in opt.state[p].items() if v.shape == p.shape]
            assert len(full) == expected and opt.state[p]["step"].dim() == 0


def test_fused_matches_eager():
    """lrfree.fused: same trajectory as eager to float32 rounding, the non-finite policy
    still applies (a NaN step is skipped, with the one sync outside the graph), and a
    Python float loss works. Dynamo's eager backend keeps this test fast; Inductor (the
    default) compiles the same graph in benchmarks/step_speed.py."""
    torch._dynamo.reset()
    net_f, net_e = MixedNet(), MixedNet()
    net_e.load_state_dict(net_f.state_dict())
    opt_f = lrfree.fused(lrfree.PSSPS(net_f.parameters(), average=True), backend="eager")
    opt_e = lrfree.PSSPS(net_e.parameters(), average=True)
    for k in range(5):
        for net, opt in ((net_f, opt_f), (net_e, opt_e)):
            x, y = data(k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            if k == 3:
                next(net.parameters()).grad.view(-1)[0] = float("nan")
            opt.step(loss=float(loss.detach()))
    assert opt_f.param_groups[0]["skipped_steps"] == opt_e.param_groups[0]["skipped_steps"] == 1
    for pf, pe in zip(net_f.parameters(), net_e.parameters()):
        assert relative(pf, pe) <= FOREACH_RTOL


def test_fused_then_lr_scheduler():
    """An LR scheduler created after lrfree.fused wraps the fused step (it needs a bound
    method), its lr reaches the compiled step without a recompile, and the trajectory is
    the eager optimizer's under the same schedule."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net_f, net_e = MixedNet(), MixedNet()
    net_e.load_state_dict(net_f.state_dict())
    opt_f = lrfree.fused(lrfree.PSDASGD(net_f.parameters()), backend=counter)
    opt_e = lrfree.PSDASGD(net_e.parameters())
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + k)) for o in (opt_f, opt_e)]
    frames = []
    for k in range(6):
        for net, opt, sched in ((net_f, opt_f, scheds[0]), (net_e, opt_e, scheds[1])):
            x, y = data(k)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
        frames.append(counter.frame_count)
    # step 1 runs eagerly (it creates the state); dynamo specialises the first lr it sees and
    # recompiles once with lr symbolic at the first change; after that, no recompilation
    assert frames[0] == 0 and frames[-1] == frames[2] <= 2, frames
    assert opt_f.param_groups[0]["lr"] == opt_e.param_groups[0]["lr"] == 1.0 / 7
    for pf, pe in zip(net_f.parameters(), net_e.parameters()):
        assert relative(pf, pe) <= FOREACH_RTOL


def _pass_counter():
    """benchmarks/step_speed.py's PassCounter (the benchmark reports the same counts)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
    spec = importlib.util.spec_from_file_location("step_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Tensor passes (elements read + written / parameters) of one steady-state step of the
# default options, foreach and per-tensor: a regression (a temporary that is materialised
# again, a sum read twice) shows here long before it shows in a timing. torch's foreach
# AdamW makes 20 (checked, so the counter itself is pinned).
PASSES = [("AdamW", 20), ("PSDASGD", 31), ("PSSPS", 24)]


@pytest.mark.parametrize("name,limit", PASSES)
@pytest.mark.parametrize("foreach", [True, False])
def test_tensor_passes_per_step(name, limit, foreach):
    bench = _pass_counter()
    params = bench.transformer_params(64, 2, 100)  # 28 tensors of 64 to 25600 elements
    grads = [[torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) for p in params]
             for k in range(2)]
    if name == "AdamW":
        opt = torch.optim.AdamW(params, foreach=foreach)
    else:
        opt = optimizer_class(name)(params, foreach=foreach)
    counted = bench.count_passes(opt, params, grads)
    assert counted["passes"] <= limit + 0.01, counted
    assert counted["passes"] >= limit - 0.01, f"fewer passes than pinned, update PASSES: {counted}"


@pytest.mark.parametrize("name", ["PSDASGD", "PSSPS"])
def test_check_sees_huge_finite_gradients_as_finite(name):
    """The non-finite check reads min and max of each gradient (one vectorised pass, where
    the inf-norm kernel is slow on a CPU): a gradient of 1e30, whose square overflows
    float32, is still finite and the step is taken; a NaN skips it with no state change.
    One host sync either way."""
    net = MixedNet()
    opt = optimizer_class(name)(net.parameters())
    train(net, opt, 2)
    x, y = data(2)
    for value, skipped in ((1e30, 0), (float("nan"), 1), (float("-inf"), 2)):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        net.fc.weight.grad.view(-1)[0] = value
        before = copy.deepcopy(opt.state_dict())
        with count_host_syncs() as calls:
            opt.step(loss=torch.tensor(1.0))
        assert len(calls) == 1
        assert opt.param_groups[0].get("skipped_steps", 0) == skipped
        changed = any(not torch.equal(v, before["state"][i][k])
                      for i, s in enumerate(opt.state_dict()["state"].values())
                      for k, v in s.items())
        assert changed == (value == 1e30)
