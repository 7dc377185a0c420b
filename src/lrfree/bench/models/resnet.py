"""CIFAR-style ResNet (He et al. 2016, section 4.2) without batch normalisation.

The paper under test trains ResNet-20 with BN removed. Without BN a deep residual stack
starts with activations that grow with depth; we use the Fixup recipe (Zhang, Dauphin & Ma
2019) to keep it trainable: every residual branch ends in a zero-initialised conv, so each
block starts as the identity, and the branch's first conv gets He init scaled by L^(-1/2)
(L = number of blocks). Convs carry biases in place of BN's shift. Shortcuts that change
shape are parameter-free (stride-2 subsampling plus zero channels, "option A").

Why zero init rather than a small random one: He init scaled by L^(-1/2) on both branch
convs learnt faster under Adam(lr=1e-3) but blew up (loss ~19) in the first steps at
lr=1e-2, while zero init stayed stable; learning-rate-free methods can take large early
steps, so stability wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, num_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.stride, self.extra_channels = stride, c_out - c_in
        nn.init.kaiming_normal_(self.conv1.weight, nonlinearity="relu")
        with torch.no_grad():
            self.conv1.weight.mul_(num_blocks**-0.5)
        nn.init.zeros_(self.conv1.bias)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x)))
        return F.relu(self._shortcut(x) + branch)


class ResNetCifar(nn.Module):
    """Three stages of `blocks_per_stage` basic blocks at widths w, 2w, 4w; depth 6n+2."""

    def __init__(
        self,
        blocks_per_stage: int = 3,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
    ) -> None:
        super().__init__()
        total = 3 * blocks_per_stage
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1)
        nn.init.kaiming_normal_(self.stem.weight, nonlinearity="relu")
        nn.init.zeros_(self.stem.bias)
        blocks: list[nn.Module] = []
        c_in = width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_Block(c_in, c_out, stride, total))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def resnet20(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(3, in_channels, num_classes)
