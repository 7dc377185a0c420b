"""A small VGG-style net (Simonyan & Zisserman 2015) without batch normalisation.

Six 3x3 convs in three pooled stages, then a two-layer classifier. Shallow enough that He
initialisation alone keeps activations well scaled, so no normalisation is needed.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallVGG(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        image_size: int = 28,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # He init on the last layer gives logits of scale ~5 and an initial loss near 5;
        # a zero head starts every run at the uniform prediction instead.
        nn.init.zeros_(self.classifier[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
