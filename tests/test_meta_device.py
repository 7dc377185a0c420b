"""Every optimizer, with every option that changes its step, stepped on ``meta`` tensors.

A meta tensor has a device and a shape but no values. Two CUDA failures are reproduced here
without a GPU: a tensor created without ``device=`` (on the CPU) meeting the parameters'
tensors raises exactly as on CUDA (issue 16: ``torch.tensor(d.numel())`` crashed every PS
optimizer at its first CUDA step), and reading a value back to the host (a host sync)
raises too. The checked modes ("skip", "raise") read one pair of flags per step by design
(``tolist`` in ``_finite``): ``Tensor.tolist`` is replaced to count those reads on meta
tensors and answer "finite", so any other host read in a step (``item``, ``bool``,
``float``) still fails the test.
"""
from __future__ import annotations

import pytest
import torch

from option_matrix import CASES, IDS, NONFINITE


def _params(dtype=torch.float32):
    shapes = [(6, 5), (5,), (3, 4, 2), (1,), (0, 3)]  # a matrix, a vector, a 3-d, 1 element, empty
    return [torch.nn.Parameter(torch.empty(s, device="meta", dtype=dtype)) for s in shapes]


class _Reads:
    def __init__(self):
        self.count = 0
        self.real = torch.Tensor.tolist

    def __call__(self, tensor):
        if tensor.device.type != "meta":
            return self.real(tensor)
        self.count += 1
        return [0.0, 1.0][: tensor.numel()]  # nothing bad, not every gradient zero


def _step_on_meta(cls, kwargs, nonfinite, monkeypatch, steps=3, dtype=torch.float32):
    params = _params(dtype)
    opt = cls([{"params": params[:3]}, {"params": params[3:], "lr": 0.5}],
              nonfinite=nonfinite, **kwargs)
    reads = _Reads()
    monkeypatch.setattr(torch.Tensor, "tolist", lambda tensor: reads(tensor))
    for _ in range(steps):
        for p in params:
            p.grad = torch.empty_like(p)
        opt.step(loss=torch.empty((), device="meta", dtype=dtype))
    return opt, params, reads


@pytest.mark.parametrize("nonfinite", NONFINITE)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_steps_on_meta(case, nonfinite, monkeypatch):
    _, cls, kwargs = case
    opt, params, reads = _step_on_meta(cls, kwargs, nonfinite, monkeypatch)
    # one host read per checked step, none unchecked
    assert reads.count == (0 if nonfinite == "unchecked" else 3)
    for p in params:  # every state tensor lives where its parameter does
        for name, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "meta", name
    for group in opt.param_groups:
        for key in ("effective_lr", "d", "d_hat", "polyak_step"):
            value = group.get(key)
            if isinstance(value, torch.Tensor):
                assert value.device.type == "meta", key


@pytest.mark.parametrize("name", ["psdasgd", "pssps", "psdog"])
def test_meta_catches_a_cpu_tensor(name, monkeypatch):
    """The guard can fail: a CPU tensor slipped into the normaliser (the issue-16 bug,
    planted back) raises on meta as it did on CUDA."""
    from lrfree.optim import _scaled
    from option_matrix import PS

    real_full = torch.full

    def full_on_cpu(*args, **kwargs):
        kwargs.pop("device", None)
        return real_full(*args, **kwargs)

    monkeypatch.setattr(_scaled.torch, "full", full_on_cpu)
    with pytest.raises(RuntimeError, match="device|meta"):
        _step_on_meta(PS[name], {}, "unchecked", monkeypatch, steps=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", ["psdasgd", "pssps", "psdog"])
def test_low_and_high_precision_on_meta(name, dtype, monkeypatch):
    from option_matrix import PS
    opt, params, _ = _step_on_meta(PS[name], {}, "skip", monkeypatch, dtype=dtype)
    wanted = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    assert opt.state[params[0]]["step"].dtype in (wanted, torch.float32, torch.float64)
    assert all(v.dtype == wanted for k, v in opt.state[params[0]].items() if k != "step")
