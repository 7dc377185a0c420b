"""A small conv encoder for self-supervised pretraining: image -> feature vector."""

from __future__ import annotations

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """Five 3x3 convs (two with stride 2) and global average pooling; `out_dim` features."""

    def __init__(self, in_channels: int = 1, width: int = 32, out_dim: int = 128) -> None:
        super().__init__()
        w = width
        plan = [
            (in_channels, w, 1),
            (w, 2 * w, 2),
            (2 * w, 2 * w, 1),
            (2 * w, out_dim, 2),
            (out_dim, out_dim, 1),
        ]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in plan:
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))
