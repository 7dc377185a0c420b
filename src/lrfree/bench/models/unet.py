"""A small U-Net (Ronneberger et al. 2015): two down/up levels with skip connections.

No normalisation layers, He init: at this depth that trains stably and keeps the task about
the optimizer, not about normalisation statistics.
"""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1, self.enc2 = _double_conv(in_channels, w1), _double_conv(w1, w2)
        self.bottom = _double_conv(w2, w3)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(w3, w2, 2, stride=2), _double_conv(2 * w2, w2)
        self.up1, self.dec1 = nn.ConvTranspose2d(w2, w1, 2, stride=2), _double_conv(2 * w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # He init on the 1x1 head gives large logits; zero starts at the uniform prediction.
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)
