"""Test 7 of the core issue: bad input gets a clear error naming the argument; nothing in
the optimizer state is corrupted by a non-finite gradient or loss."""
import math
import re

import pytest
import torch

import lrfree
from problems import TinyNet, batches, flat, param_groups


def p():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("cls,kwargs,name", [
    (lrfree.PSDASGD, dict(lr=-1.0), "lr"),
    (lrfree.PSDASGD, dict(lr=float("nan")), "lr"),
    (lrfree.PSDASGD, dict(betas=(1.0, 0.999)), "betas[0]"),
    (lrfree.PSDASGD, dict(betas=(0.9, -0.1)), "betas[1]"),
    (lrfree.PSDASGD, dict(betas=0.9), "betas"),
    (lrfree.PSDASGD, dict(eps=-1e-8), "eps"),
    (lrfree.PSDASGD, dict(eps=0.0), "eps"),
    (lrfree.PSDASGD, dict(weight_decay=-0.1), "weight_decay"),
    (lrfree.PSDASGD, dict(d0=0.0), "d0"),
    (lrfree.PSDASGD, dict(d_coef=0.0), "d_coef"),
    (lrfree.PSDASGD, dict(growth_rate=0.5), "growth_rate"),
    (lrfree.PSDASGD, dict(scaling="adamw"), "scaling"),
    (lrfree.PSDASGD, dict(alpha_norm="max"), "alpha_norm"),
    (lrfree.PSDASGD, dict(nonfinite="ignore"), "nonfinite"),
    (lrfree.PSDASGD, dict(state_dtype="bf16"), "state_dtype"),
    (lrfree.PSSPS, dict(c=0.0), "c"),
    (lrfree.PSSPS, dict(f_star=float("nan")), "f_star"),
    (lrfree.PSSPS, dict(cap_growth=0.9), "cap_growth"),
    (lrfree.PSSPS, dict(cap_start=-1.0), "cap_start"),
    (lrfree.SPS, dict(delta=-1.0), "delta"),
    (lrfree.DAdaptSGD, dict(momentum=1.0), "momentum"),
    (lrfree.DAdaptSGD, dict(lr="1e-3"), "lr"),
])
def test_invalid_hyperparameters_name_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match="^" + re.escape(name) + "="):
        cls(p(), **kwargs)


def test_tensor_lr_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="float"):
        lrfree.PSDASGD(p(), lr=torch.tensor(1.0))


@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS, lrfree.DAdaptSGD])
def test_sparse_gradient_is_a_clear_error(cls):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step(loss=1.0)


@pytest.mark.parametrize("cls", [lrfree.PSSPS, lrfree.SPS])
def test_polyak_without_loss_says_how_to_pass_it(cls):
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w])
    (w ** 2).sum().backward()
    with pytest.raises(ValueError, match=r"step\(loss=loss\)"):
        opt.step()


def test_non_scalar_loss_is_rejected():
    w = torch.nn.Parameter(torch.ones(3))
    opt = lrfree.PSSPS([w])
    (w ** 2).sum().backward()
    with pytest.raises(ValueError, match="scalar"):
        opt.step(loss=w.detach() ** 2)


def snapshot(net, opt):
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    est = {k: v.clone() for k, v in opt.param_groups[0]["estimate"].items()}
    return flat(net).clone(), state, est


def train_steps(net, opt, steps, start=0):
    x, y = batches()
    for step in range(start, start + steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[:32], step), y[:32])
        loss.backward()
        opt.step(loss=loss)


@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS, lrfree.SPS, lrfree.DAdaptSGD])
@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_loss"])
def test_nonfinite_step_is_skipped_and_counted(cls, bad):
    net = TinyNet()
    opt = cls(param_groups(net))
    train_steps(net, opt, 5)
    params, state, est = snapshot(net, opt)
    x, y = batches()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x[:32], 5), y[:32])
    loss.backward()
    if bad == "nan_grad":
        net.w1.grad[0, 0] = float("nan")
    elif bad == "inf_grad":
        net.w2.grad[1, 1] = float("inf")
    else:
        loss = loss * float("nan")
    opt.step(loss=loss)
    params2, state2, est2 = snapshot(net, opt)
    assert torch.equal(params, params2)
    for key in state:
        for name in state[key]:
            assert torch.equal(state[key][name], state2[key][name]), name
    for name in est:
        assert torch.equal(est[name], est2[name]), name
    assert opt.param_groups[0]["skipped_steps"] == 1
    train_steps(net, opt, 5, start=6)
    assert torch.isfinite(flat(net)).all()
    assert math.isfinite(float(opt.param_groups[0]["effective_lr"]))


def test_nonfinite_raise_policy():
    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net), nonfinite="raise")
    train_steps(net, opt, 2)
    before = flat(net).clone()
    x, y = batches()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x[:32], 2), y[:32]).backward()
    net.b1.grad[0] = float("inf")
    with pytest.raises(lrfree.NonFiniteError, match="non-finite"):
        opt.step()
    assert torch.equal(flat(net), before)


def test_load_state_dict_with_other_groups_fails_clearly():
    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net))
    train_steps(net, opt, 2)
    other = lrfree.PSDASGD(net.parameters())
    with pytest.raises(ValueError, match="group"):
        other.load_state_dict(opt.state_dict())
