"""A small Vision Transformer trained from scratch on Fashion-MNIST.

Patch 4 (7x7 = 49 tokens), width 64, depth 4, 4 heads, MLP ratio 2: about 0.14M parameters.
Same data, augmentation and metric as the conv nets in image.py; transformers are where
adaptive (Adam-like) scaling matters most, which is why the suite includes one.
Cost per run, one thread (CPU seconds): quick 18 s, full 57 s.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from lrfree.bench.models import ViT
from lrfree.bench.tasks.base import Budget
from lrfree.bench.tasks.image import FashionClassificationTask, classification_budgets


class ViTTask(FashionClassificationTask):
    family = "vit"
    name = "vit-fmnist"
    budgets: ClassVar[dict[str, Budget]] = classification_budgets(
        quick=(100, 64, 1000), full=(300, 64, 2000)
    )

    def build_model(self) -> nn.Module:
        return ViT(image_size=28, patch=4, in_channels=1, dim=64, depth=4, heads=4)
