"""Semantic segmentation of generated shapes with a small U-Net; metric: mean IoU.

No real segmentation data is available offline, so images come from `data/shapes.py`:
32x32 gray images with 1-3 textured discs, rectangles and triangles on a textured
background (4 classes). The training and test sets are fixed (their own seeds, not the run
seed), like a real dataset; the run seed only sets the initial weights, the batch order and
the flips. Predicting background everywhere scores mIoU ~0.20; Adam(1e-3) reaches ~0.33
(quick) and ~0.34 (full). Cost per run, one thread (CPU seconds): quick 18 s, full 60 s.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from lrfree.bench.data.shapes import NUM_CLASSES, generate_shapes
from lrfree.bench.models import UNet, build_seeded
from lrfree.bench.tasks.base import Budget, OptimizerFactory, TrainLog
from lrfree.bench.tasks.image import EVAL_BATCH, train_loop

TRAIN_SEED, TEST_SEED = 1, 2


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """IoU per class over the whole set, averaged over classes present in pred or target."""
    ious = []
    for cls in range(num_classes):
        p, t = pred == cls, target == cls
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return sum(ious) / len(ious)


def _flip(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Flip image and mask together, horizontally for a random half of the batch."""
    flipped = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    mask = torch.where(flipped[:, None, None], mask.flip(-1), mask)
    return x, mask


class UNetSegTask:
    name = "unet-shapes"
    family = "segmentation"
    metric = "mIoU"
    higher_is_better = True
    budgets: ClassVar[dict[str, Budget]] = {
        "tiny": Budget("tiny", 4, 8, 2, {"train_size": 64, "test_size": 32}),
        "quick": Budget("quick", 300, 8, 150, {"train_size": 2048, "test_size": 256}),
        "full": Budget("full", 600, 16, 200, {"train_size": 4096, "test_size": 512}),
    }

    def budget(self, level: str) -> Budget:
        return self.budgets[level]

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Train on `device` (batches move there one at a time); returns the final mIoU."""
        budget = self.budget(level)
        x_train, y_train = generate_shapes(budget.extra["train_size"], TRAIN_SEED)
        x_test, y_test = generate_shapes(budget.extra["test_size"], TEST_SEED)
        model = build_seeded(lambda: UNet(in_channels=1, num_classes=NUM_CLASSES), seed)
        model.to(device)

        def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            xb, yb = _flip(x_train[idx], y_train[idx], gen)
            return F.cross_entropy(model(xb.to(device)), yb.to(device))

        def evaluate() -> float:
            pred = torch.cat([model(x_test[i : i + EVAL_BATCH].to(device)).argmax(1).cpu()
                              for i in range(0, len(x_test), EVAL_BATCH)])
            return mean_iou(pred, y_test, NUM_CLASSES)

        return train_loop(model, factory, budget, seed, log, len(x_train), batch_loss, evaluate)
