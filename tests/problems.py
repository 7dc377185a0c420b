"""Small deterministic problems the optimizer tests train on."""
from __future__ import annotations

import copy
import functools
import io
from typing import Callable

import torch
from torch import nn

import lrfree

# PSDASGD's momentum step (schedule_free=False): what the kernels implement and what most
# tests check. The class default, "auto", takes it only when an LR scheduler is attached
# at the first step, and the schedule-free iteration otherwise (docs/algorithms.md §4h).
PSDASGDMomentum = functools.partial(lrfree.PSDASGD, schedule_free=False)


def optimizer_class(name: str) -> Callable:
    """``lrfree.<name>``, with PSDASGD's momentum step for ``"PSDASGD"``."""
    return PSDASGDMomentum if name == "PSDASGD" else getattr(lrfree, name)


class TinyNet(nn.Module):
    """A 2-layer tanh MLP plus a parameter that only receives gradients from step 4 on."""

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 1,
                 zero_head: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # drawn in float64 and cast, so every dtype starts from the same point
        def draw(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        self.w1 = nn.Parameter(draw(8, 16) / 3)
        self.b1 = nn.Parameter(torch.zeros(16, dtype=dtype))
        # a zero head gives the first layer an exactly zero first gradient
        self.w2 = nn.Parameter(draw(16, 3) / 4 * (0.0 if zero_head else 1.0))
        self.late = nn.Parameter(draw(3) / 10)

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        out = torch.tanh(x @ self.w1 + self.b1) @ self.w2
        return out + self.late if step >= 3 else out


def batches(dtype: torch.dtype = torch.float64, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g, dtype=torch.float64)
    y = (x[:, :3] @ torch.randn(3, 3, generator=g, dtype=torch.float64)).argmax(1)
    return x.to(dtype), y


def param_groups(net: TinyNet, lrs: tuple[float, float] = (1.0, 0.5)) -> list[dict]:
    return [
        {"params": [net.w1, net.b1], "lr": lrs[0]},
        {"params": [net.w2, net.late], "lr": lrs[1]},
    ]


def train(make: Callable, steps: int, *, dtype=torch.float64, lrs=(1.0, 0.5), seed: int = 1,
          on_step: Callable | None = None, loss_scale: float = 1.0):
    """Train TinyNet with ``make(param_groups)``; ``on_step(step, net, opt)`` after each step."""
    net = TinyNet(dtype, seed)
    opt = make(param_groups(net, lrs))
    x, y = batches(dtype)
    for step in range(steps):
        idx = torch.arange(step * 16, step * 16 + 16) % len(x)
        opt.zero_grad()
        loss = loss_scale * nn.functional.cross_entropy(net(x[idx], step), y[idx])
        loss.backward()
        opt.step(loss=loss)
        if on_step is not None:
            on_step(step, net, opt)
    return net, opt


def reload(net: nn.Module, opt, make: Callable):
    """Save ``net`` (a TinyNet) and ``opt`` through torch.save, load them back with
    weights_only, and rebuild both from the checkpoint: a fresh (net, opt)."""
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = TinyNet()
    net2.load_state_dict(saved["model"])
    opt2 = make(param_groups(net2))
    opt2.load_state_dict(saved["opt"])
    return net2, opt2


def resume(net: nn.Module, opt, make: Callable, start: int, steps: int):
    """:func:`reload`, the optimizer put in training mode, and training on from step
    ``start`` to ``steps`` as :func:`train` does. Returns the new (net, opt)."""
    net2, opt2 = reload(net, opt, make)
    opt2.train()
    x, y = batches()
    for step in range(start, steps):
        idx = torch.arange(step * 16, step * 16 + 16) % len(x)
        opt2.zero_grad()
        loss = nn.functional.cross_entropy(net2(x[idx], step), y[idx])
        loss.backward()
        opt2.step(loss=loss)
    return net2, opt2


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def clone(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net)
