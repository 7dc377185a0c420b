"""Regression tests for bug classes reported against peer learning-rate-free optimizers
(D-Adaptation, Prodigy, schedule-free, pytorch_optimizer ports): step counters that advance
twice, late first gradients, weight decay on parameters without a gradient, resumes that reset
counters or running averages, checkpoints that load but break the first step, and sums that
are double-counted under sharding."""
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from problems import TinyNet, batches, flat, param_groups

import lrfree

torch.set_num_threads(1)

OPTIMIZERS = {
    "psdasgd": lambda g, **kw: lrfree.PSDASGD(g, **kw),
    "pssps": lambda g, **kw: lrfree.PSSPS(g, **kw),
    "sps": lambda g, **kw: lrfree.SPS(g, **kw),
    "dadaptsgd": lambda g, **kw: lrfree.DAdaptSGD(g, momentum=0.9, **kw),
}
CLASSES = [lrfree.PSDASGD, lrfree.PSSPS, lrfree.SPS, lrfree.DAdaptSGD]


def train(net, opt, steps, start=0, mode="loss"):
    x, y = batches(next(net.parameters()).dtype)
    for step in range(start, start + steps):
        idx = torch.arange(step * 16, step * 16 + 16) % len(x)

        def closure(idx=idx, step=step):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx], step), y[idx])
            loss.backward()
            return loss

        if mode == "closure":
            opt.step(closure)
        else:
            opt.step(loss=closure())


def save_load(net, opt, make, dtype=torch.float64):
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = TinyNet(dtype)
    net2.load_state_dict(saved["model"])
    opt2 = make(param_groups(net2))
    opt2.load_state_dict(saved["opt"])
    return net2, opt2


# ------------------------------------------------------------------ step counters
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("mode", ["loss", "closure"])
def test_step_counter_advances_once_per_step(name, foreach, mode):
    """Peers have counted a step twice (once per group, or in both the closure and the
    step). Every counter must equal the number of steps actually taken: 7 here, with one
    non-finite step in between that is skipped and must not count."""
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net), foreach=foreach)
    train(net, opt, 4, mode=mode)
    opt.zero_grad()
    for p in net.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.step(loss=1.0)
    train(net, opt, 3, start=4, mode=mode)
    assert int(opt.state[net.w1]["step"]) == 7
    assert int(opt.state[net.w2]["step"]) == 7
    # TinyNet.late receives gradients from step 3 on: steps 3, (skipped), 4, 5, 6
    assert int(opt.state[net.late]["step"]) == 4
    assert int(opt.param_groups[0]["estimate"]["step"]) == 7
    assert opt.param_groups[0]["skipped_steps"] == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_group_counts_no_steps(name):
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net, (1.0, 0.0)))
    train(net, opt, 5)
    assert int(opt.state[net.w1]["step"]) == 5
    assert len(opt.state[net.w2]) == 0 and len(opt.state[net.late]) == 0


def test_bf16_step_counter_with_param_dtype_state():
    """state_dtype="param" with bf16 parameters: the step counter lived in bf16, where
    0.999 rounds to 1.0, so Adam's bias correction 1 - beta2**k was 0 and the first step
    produced NaN (and bf16 cannot count past 256). torch keeps `step` in float32 for
    this reason. Counter exact and parameters finite after 300 steps."""
    w = torch.nn.Parameter(torch.linspace(-1, 1, 8, dtype=torch.bfloat16))
    opt = lrfree.PSDASGD([w], state_dtype="param")
    for _ in range(300):
        opt.zero_grad()
        (w.float() ** 2).sum().backward()
        opt.step()
    assert torch.isfinite(w).all() and opt.param_groups[0].get("skipped_steps", 0) == 0
    assert float(opt.state[w]["step"]) == 300


# ---------------------------------------------------------------- late gradients
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("decouple", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_late_first_gradient_with_weight_decay(name, decouple, foreach):
    """A parameter whose first gradient arrives late (TinyNet.late, from step 3) must not
    crash, must not move (nor decay) before it has a gradient, and must then train."""
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net), weight_decay=0.1, decouple=decouple,
                           foreach=foreach)
    late0 = net.late.detach().clone()
    train(net, opt, 3)
    assert torch.equal(net.late, late0)
    train(net, opt, 4, start=3)
    assert torch.isfinite(flat(net)).all() and not torch.equal(net.late, late0)


def test_late_parameter_gets_its_own_bias_correction():
    """PSDASGD (Adam scaling, beta1 = 0.9): the late parameter's first update is a fresh
    Adam step, -effective_lr * g / (|g| + eps) (m_hat = g and v_hat = g^2 at its own step 1).
    With the global step count instead, m_hat = 0.1 g / (1 - 0.9^4) and v_hat = 1e-3 g^2 /
    (1 - 0.999^4) would give a step ~0.29x / 0.5x that size."""
    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net), eps=1e-8, schedule_free=False)
    train(net, opt, 3)
    before = net.late.detach().clone()
    x, y = batches()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x[48:64], 3), y[48:64]).backward()
    g = net.late.grad.clone()
    opt.step()
    lr = float(opt.param_groups[1]["effective_lr"])
    expected = before - lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(net.late.detach(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("decouple", [True, False])
def test_weight_decay_on_parameter_without_gradient(cls, decouple):
    """A parameter that never receives a gradient (unused branch) with weight decay: no
    crash, no state, no decay (as torch.optim.AdamW)."""
    used = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = cls([used, unused], weight_decay=0.5, decouple=decouple)
    for _ in range(5):
        opt.zero_grad()
        loss = ((used - 2.0) ** 2).sum()
        loss.backward()
        opt.step(loss=loss)
    assert unused.grad is None and torch.equal(unused, torch.ones(3, dtype=torch.float64))
    assert len(opt.state[unused]) == 0 and torch.isfinite(used).all()


# ---------------------------------------------------------------------- resumes
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_keeps_counters_and_running_averages(name):
    """Peers have re-initialised their step counter / estimate / EMA buffers on load. Every
    per-parameter tensor, every scalar of the estimate and the skipped-step count must come
    back bitwise, and the next step must advance them identically."""
    make = OPTIMIZERS[name]
    net = TinyNet()
    opt = make(param_groups(net))
    train(net, opt, 5)
    opt.zero_grad()
    for p in net.parameters():
        p.grad = torch.full_like(p, float("inf"))
    opt.step(loss=1.0)
    net2, opt2 = save_load(net, opt, make)
    for p, p2 in zip(net.parameters(), net2.parameters()):
        assert opt.state[p].keys() == opt2.state[p2].keys()
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt2.state[p2][key]), key
    est, est2 = opt.param_groups[0]["estimate"], opt2.param_groups[0]["estimate"]
    assert est.keys() == est2.keys()
    for key in est:
        assert torch.equal(est[key], est2[key]), key
    assert int(est2["step"]) == 5 and opt2.param_groups[0]["skipped_steps"] == 1
    train(net, opt, 1, start=5)
    train(net2, opt2, 1, start=5)
    assert int(opt2.param_groups[0]["estimate"]["step"]) == 6
    assert torch.equal(flat(net), flat(net2))


@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS, lrfree.DAdaptSGD])
def test_loaded_low_precision_checkpoint_steps(cls):
    """bf16 parameters keep their state in float32 (state_dtype="float32", the default).
    torch's Optimizer.load_state_dict casts every floating state tensor except `step` to the
    parameter's dtype, so after a resume the state was bf16 and the first step crashed
    ("expected dtype BFloat16 ... but got float"). The state must come back in float32 and
    the resumed run must continue the interrupted one bitwise."""
    def make(groups):
        return cls(groups)

    net = TinyNet(torch.bfloat16)
    opt = make(param_groups(net))
    train(net, opt, 4)
    net2, opt2 = save_load(net, opt, make, dtype=torch.bfloat16)
    for p in net2.parameters():
        for key, value in opt2.state[p].items():
            assert value.dtype == torch.float32, key
    train(net, opt, 4, start=4)
    train(net2, opt2, 4, start=4)
    assert torch.equal(flat(net), flat(net2))


@pytest.mark.parametrize("cls", CLASSES)
def test_checkpoint_from_float64_run_loads_into_float32_model(cls):
    """A float64 checkpoint loaded into a float32 model (torch casts the state): the
    estimate scalars stay float64 in the param group; the first step must work, keep the
    parameters float32 and stay finite."""
    net = TinyNet(torch.float64)
    opt = cls(param_groups(net))
    train(net, opt, 3)
    sd = {"model": net.state_dict(), "opt": opt.state_dict()}
    net32 = TinyNet(torch.float32)
    net32.load_state_dict({k: v.float() for k, v in sd["model"].items()})
    opt32 = cls(param_groups(net32))
    opt32.load_state_dict(sd["opt"])
    train(net32, opt32, 3, start=3)
    assert all(p.dtype == torch.float32 for p in net32.parameters())
    assert torch.isfinite(flat(net32)).all()


# ---------------------------------------------------------- sharded sums (gloo)
SHARD_SCRIPT = textwrap.dedent(r"""
    import gc
    import sys
    import torch
    import torch.distributed as dist
    import lrfree
    from problems import TinyNet, batches

    torch.set_num_threads(1)
    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    MAKE = {"psdasgd": lambda g, pg: lrfree.PSDASGD(g, process_group=pg),
            "pssps": lambda g, pg: lrfree.PSSPS(g, process_group=pg),
            "sps": lambda g, pg: lrfree.SPS(g, process_group=pg),
            "dadaptsgd": lambda g, pg: lrfree.DAdaptSGD(g, momentum=0.9, process_group=pg)}
    # new_group is collective: both ranks create both single-rank groups
    single = [dist.new_group([0]), dist.new_group([1])]

    def run(name, owner, group):
        net = TinyNet()
        params = dict(net.named_parameters())
        mine = [params[k] for k in params if owner[k] == rank]
        opt = MAKE[name]([{"params": mine}], group)
        x, y = batches()
        for step in range(12):
            idx = torch.arange(step * 16, step * 16 + 16) % len(x)
            net.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx], step), y[idx])
            loss.backward()
            opt.step(loss=loss)
            if group is dist.group.WORLD:
                with torch.no_grad():
                    for k, p in params.items():
                        dist.broadcast(p, src=owner[k])
        keys = ("d", "polyak_step", "effective_lr")
        return {"params": [p.detach().clone() for p in params.values()],
                "group": {k: opt.param_groups[0][k] for k in keys if k in opt.param_groups[0]}}

    results = {}
    # rank 0 owns w1, b1, w2; rank 1 owns only `late`, which has no gradient for the first
    # three steps: that rank still joins every collective with zero contributions
    for name in MAKE:
        results[name] = run(name, {"w1": 0, "b1": 0, "w2": 0, "late": 1}, dist.group.WORLD)
    # world size 1 with an explicit group: rank 0 holds everything
    if rank == 0:
        results["single"] = run("psdasgd", {"w1": 0, "b1": 0, "w2": 0, "late": 0}, single[0])
        torch.save(results, out)
    # Teardown (docs/distributed.md, "Teardown"): the single-rank groups held here keep their
    # gloo worker threads alive after destroy_process_group(); left to interpreter shutdown,
    # such a thread can need the GIL to free a finished collective after shutdown has begun
    # and abort the process ("terminate called without an active exception"; seen once in
    # CI on torch 2.11). Release them, and collect, while the interpreter is fully alive.
    del results
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    del single
    gc.collect()
""")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One two-rank gloo job (CPU) for every optimizer: starting processes is the cost."""
    tmp = tmp_path_factory.mktemp("shard")
    script, out = tmp / "shard.py", tmp / "out.pt"
    script.write_text(SHARD_SCRIPT)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp / "store"), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return torch.load(out, weights_only=True)


def _unsharded(name):
    net = TinyNet()
    opt = OPTIMIZERS[name]([{"params": list(net.parameters())}])
    train(net, opt, 12)
    return net, opt


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sharded_sums_are_not_double_counted(sharded, name):
    """Two gloo ranks, each owning part of the parameters (process_group= path), must take
    the steps of one unsharded optimizer. A sum counted twice (an all-reduce of an already
    global value, a summed instead of averaged loss) changes d, the Polyak step or N by 2x.
    The all-reduce adds per-rank partial sums in another order, so the match is to float64
    rounding over 12 steps, not bitwise."""
    result = sharded[name]
    net, opt = _unsharded(name)
    params = torch.cat([p.reshape(-1) for p in result["params"]])
    torch.testing.assert_close(params, flat(net), rtol=1e-10, atol=1e-12)
    for key, value in result["group"].items():
        torch.testing.assert_close(torch.as_tensor(value),
                                   torch.as_tensor(opt.param_groups[0][key]), rtol=1e-10, atol=0)


def test_single_rank_process_group_is_bitwise_the_unsharded_run(sharded):
    """World size 1 with an explicit process_group: every collective is the identity, so
    the run must be bitwise the one without a group."""
    net, _ = _unsharded("psdasgd")
    assert torch.equal(torch.cat([p.reshape(-1) for p in sharded["single"]["params"]]), flat(net))
