"""Test 6 of the core issue: the torch.optim contract (closure, loss as tensor or float,
param groups, late and zero gradients, dtypes, bitwise resume) for every optimizer."""
import copy
import io
import math

import pytest
import torch

import lrfree
from problems import TinyNet, batches, flat, param_groups

OPTIMIZERS = {
    "psdasgd": lambda g, **kw: lrfree.PSDASGD(g, **kw),
    "psdasgd-amsgrad": lambda g, **kw: lrfree.PSDASGD(g, scaling="amsgrad", weight_decay=0.01, **kw),
    "psdasgd-adafactor": lambda g, **kw: lrfree.PSDASGD(g, scaling="adafactor", **kw),
    "pssps": lambda g, **kw: lrfree.PSSPS(g, **kw),
    "pssps-adafactor": lambda g, **kw: lrfree.PSSPS(g, scaling="adafactor", weight_decay=0.01,
                                                    **kw),
    "psdog": lambda g, **kw: lrfree.PSDoG(g, **kw),
    "sps": lambda g, **kw: lrfree.SPS(g, **kw),
    "dadaptsgd": lambda g, **kw: lrfree.DAdaptSGD(g, momentum=0.9, **kw),
}


def run(make, steps, net=None, opt=None, start=0, dtype=torch.float64, mode="loss"):
    net = net or TinyNet(dtype)
    opt = opt or make(param_groups(net))
    x, y = batches(dtype)
    for step in range(start, start + steps):
        idx = torch.arange(step * 16, step * 16 + 16) % len(x)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx], step), y[idx])
            loss.backward()
            return loss

        if mode == "closure":
            opt.step(closure)
        else:
            loss = closure()
            opt.step(loss=float(loss) if mode == "float" else loss)
    return net, opt


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_closure_tensor_and_float_loss_agree(name):
    a, _ = run(OPTIMIZERS[name], 10, mode="closure")
    b, _ = run(OPTIMIZERS[name], 10, mode="loss")
    c, _ = run(OPTIMIZERS[name], 10, mode="float")
    assert torch.equal(flat(a), flat(b)) and torch.equal(flat(a), flat(c))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_closure_return_value(name):
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net))
    x, y = batches()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[:16], 0), y[:16])
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bitwise_resume(name):
    """N steps straight == k steps, state_dict through torch.save into a fresh optimizer
    (and a fresh model), N - k steps."""
    straight, _ = run(OPTIMIZERS[name], 20)
    net, opt = run(OPTIMIZERS[name], 8)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = TinyNet()
    net2.load_state_dict(saved["model"])
    opt2 = OPTIMIZERS[name](param_groups(net2))
    opt2.load_state_dict(saved["opt"])
    resumed, _ = run(OPTIMIZERS[name], 12, net=net2, opt=opt2, start=8)
    assert torch.equal(flat(resumed), flat(straight))


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_preserved_and_float32_tracks_float64(name, dtype):
    net, opt = run(OPTIMIZERS[name], 15, dtype=dtype)
    for p in net.parameters():
        assert p.dtype == dtype
        for key, value in opt.state[p].items():
            assert value.dtype == dtype, key
    ref, _ = run(OPTIMIZERS[name], 15, dtype=torch.float64)
    assert float((flat(net).double() - flat(ref)).norm() / flat(ref).norm()) < 1e-4


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_late_gradient_gets_its_own_state(name):
    """TinyNet.late has no gradient for 3 steps: no state until then, then a step count
    that starts at 1 (its own bias correction)."""
    net, opt = run(OPTIMIZERS[name], 3)
    assert len(opt.state[net.late]) == 0
    net, opt = run(OPTIMIZERS[name], 2, net=net, opt=opt, start=3)
    assert int(opt.state[net.late]["step"]) == 2 and int(opt.state[net.w1]["step"]) == 5


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_gradients_take_no_step_and_do_not_poison(name):
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net))
    before = flat(net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(3):
        opt.step(loss=0.0)
    assert torch.equal(flat(net), before)
    run(OPTIMIZERS[name], 10, net=net, opt=opt)
    assert torch.isfinite(flat(net)).all() and not torch.equal(flat(net), before)
    for group in opt.param_groups:
        assert math.isfinite(float(group["effective_lr"]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_relative_group_lr(name):
    """Group 2's lr = 0.5 halves its effective lr relative to group 1."""
    _, opt = run(OPTIMIZERS[name], 10)
    lr1, lr2 = (float(g["effective_lr"]) for g in opt.param_groups)
    assert lr1 > 0 and abs(lr2 / lr1 - 0.5) < 1e-12


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_scheduler_composes(name):
    """A torch scheduler scales the step: lr multiplier 0 at every step means no movement,
    and LambdaLR halves effective_lr relative to an unscheduled run with the same estimate."""
    net = TinyNet()
    opt = OPTIMIZERS[name](param_groups(net, (1.0, 1.0)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5)
    run(OPTIMIZERS[name], 5, net=net, opt=opt)
    sched.step()
    estimate = copy.deepcopy(opt.param_groups[0].get("estimate"))
    assert opt.param_groups[0]["lr"] == 0.5 and estimate is not None


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_observability_keys(name):
    _, opt = run(OPTIMIZERS[name], 5)
    keys = ("d", "d_hat") if "dadapt" in name or "psdasgd" in name else (
        ("dog_step",) if name == "psdog" else ("polyak_step",))
    for group in opt.param_groups:
        for key in (*keys, "effective_lr"):
            assert math.isfinite(float(group[key])), key


def test_no_state_outside_state_dict():
    """Everything that changes during training is in state_dict (no hidden attributes)."""
    _, opt = run(OPTIMIZERS["psdasgd"], 5)
    attrs = {k: v for k, v in vars(opt).items() if k not in ("state", "param_groups", "defaults")}
    _, opt2 = run(OPTIMIZERS["psdasgd"], 9)
    attrs2 = {k: v for k, v in vars(opt2).items() if k not in ("state", "param_groups", "defaults")}
    assert attrs.keys() == attrs2.keys()
    for k in attrs:
        if not callable(attrs[k]) and not k.startswith("_opt_called") and "hook" not in k:
            assert repr(attrs[k]) == repr(attrs2[k]), k
