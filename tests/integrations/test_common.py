"""What every integration relies on: the scalars, the loss hook, the install hint."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

import lrfree
from lrfree.integrations._common import LossFeed, learning_rate_scalars


def test_scalars_of_a_plain_torch_optimizer_are_its_lrs():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1e-3)
    assert learning_rate_scalars(opt) == {"effective_lr/group0": 1e-3, "effective_lr/group1": 0.1}


def test_scalars_name_what_each_lrfree_optimizer_estimates():
    expected = {"pssps": "polyak_step", "psdasgd": "d", "psdog": "dog_step", "sps": "polyak_step",
                "dadaptsgd": "d"}
    for name, key in expected.items():
        p = torch.nn.Parameter(torch.ones(3))
        opt = lrfree.create(name, [p])
        p.grad = torch.ones(3)
        opt.step(loss=1.0)
        scalars = learning_rate_scalars(opt)
        assert scalars["effective_lr"] == float(opt.param_groups[0]["effective_lr"]) > 0
        assert scalars[key] == float(opt.param_groups[0][key])


def test_feed_hands_the_sum_and_leaves_an_explicit_loss_alone():
    p = torch.nn.Parameter(torch.ones(3))
    opt = lrfree.PSSPS([p])
    twin_p = torch.nn.Parameter(torch.ones(3))
    twin = lrfree.PSSPS([twin_p])
    feed = LossFeed()
    handle = feed.attach(opt)
    for loss in (torch.tensor(0.25), torch.tensor(0.5)):
        feed.add(loss)
    p.grad = twin_p.grad = torch.full((3,), 0.5)
    opt.step()
    twin.step(loss=torch.tensor(0.75))
    assert torch.equal(p, twin_p)
    p.grad = twin_p.grad = torch.full((3,), 0.5)
    opt.step(loss=2.0)  # explicit: not replaced by the recorded sum
    twin.step(loss=2.0)
    assert torch.equal(p, twin_p)
    handle.remove()


def test_fused_optimizer_is_refused_scheduled_one_is_not():
    p = torch.nn.Parameter(torch.ones(3))
    scheduled = lrfree.PSSPS([p])
    torch.optim.lr_scheduler.LambdaLR(scheduled, lambda s: 1.0)  # wraps step on the instance
    LossFeed().attach(scheduled)
    with pytest.raises(ValueError, match="lrfree.fused"):
        LossFeed().attach(lrfree.fused(lrfree.PSSPS([torch.nn.Parameter(torch.ones(3))])))


@pytest.mark.parametrize("module,framework", [("huggingface", "transformers"),
                                              ("lightning", "lightning")])
def test_missing_framework_names_the_extra(monkeypatch, module, framework):
    name = f"lrfree.integrations.{module}"
    monkeypatch.delitem(sys.modules, name, raising=False)
    for blocked in (framework, "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.setitem(sys.modules, f"{framework}.pytorch.callbacks", None)
    with pytest.raises(ImportError, match=r"lrfree\[integrations\]"):
        importlib.import_module(name)


def test_lrfree_does_not_import_the_integrations():
    import subprocess

    code = ("import sys, lrfree; bad = [m for m in sys.modules if m.startswith(("
            "'lrfree.integrations', 'transformers', 'lightning', 'tensorboard'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
