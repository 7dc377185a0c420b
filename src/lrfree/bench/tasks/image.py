"""Image classification on Fashion-MNIST: ResNet-20 and a small VGG, both without BN.

The paper trains ResNet-20/VGG on CIFAR-10 with batch norm removed; CIFAR is not available
offline, so these run on Fashion-MNIST at its native 28x28x1 (about 1.5x cheaper than padding
to 32x32x3, and the models are shape-agnostic). Augmentation: random 28x28 crop of the image
padded by 2, random horizontal flip.

Budgets train on a fixed subset of the training set (the first `train_size` images) and
measure accuracy on the first `test_size` test images.

Cost per run, one thread (torch 2.13 CPU, CPU seconds; wall was ~2x on the shared 2-core
machine): ResNet-20 quick 18 s, full 50 s; VGG quick 20 s, full 58 s; tiny about 1 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lrfree.bench.data.augment import random_crop_flip
from lrfree.bench.data.batches import batch_indices
from lrfree.bench.data.fashion_mnist import load_fashion_mnist
from lrfree.bench.models import SmallVGG, build_seeded, resnet20
from lrfree.bench.tasks.base import Budget, OptimizerFactory, OptimizerHandle, TrainLog

# Offset between the init seed and the data-order/augmentation seed, so the two streams differ.
DATA_SEED_OFFSET = 0x5EED
EVAL_BATCH = 256


@contextmanager
def evaluating(model: nn.Module, handle: OptimizerHandle) -> Iterator[None]:
    """Switch model and optimizer to evaluation (schedule-free swaps weights) and back."""
    handle.eval()
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train()
        handle.train()


def data_generator(seed: int) -> torch.Generator:
    """The RNG for data order and augmentation of run `seed`, apart from the init RNG."""
    return torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)


def is_eval_step(step: int, budget: Budget) -> bool:
    """Evaluate after every `eval_every` updates and always after the last one."""
    return step % budget.eval_every == 0 or step == budget.steps


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             device: torch.device | str = "cpu") -> float:
    """Fraction of (x, y) classified correctly; batches move to `device` one at a time."""
    correct = sum(
        int((model(x[i : i + EVAL_BATCH].to(device)).argmax(1).cpu() == y[i : i + EVAL_BATCH])
            .sum())
        for i in range(0, len(x), EVAL_BATCH)
    )
    return correct / len(x)


class FashionClassificationTask:
    """Supervised training on Fashion-MNIST with cross-entropy; metric: test accuracy.

    Subclasses set `name`, `family`, `budgets` and `build_model`.
    """

    family = "image"
    metric = "test_acc"
    higher_is_better = True
    augment = True
    budgets: ClassVar[dict[str, Budget]] = {}

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def budget(self, level: str) -> Budget:
        return self.budgets[level]

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Train on `device` (data stays on the CPU, where it is augmented, and moves there
        one batch at a time); returns the final test accuracy."""
        budget = self.budget(level)
        x_train, y_train = load_fashion_mnist(
            "train", data_dir=self.data_dir, subset=budget.extra["train_size"]
        )
        x_test, y_test = load_fashion_mnist(
            "test", data_dir=self.data_dir, subset=budget.extra["test_size"]
        )
        model = build_seeded(self.build_model, seed).to(device)

        def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            xb = random_crop_flip(x_train[idx], gen) if self.augment else x_train[idx]
            return F.cross_entropy(model(xb.to(device)), y_train[idx].to(device))

        return train_loop(model, factory, budget, seed, log, len(x_train), batch_loss,
                          lambda: accuracy(model, x_test, y_test, device))


def train_loop(model: nn.Module, factory: OptimizerFactory, budget: Budget, seed: int,
               log: TrainLog, n_train: int,
               batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
               evaluate: Callable[[], float]) -> float:
    """The loop the supervised tasks share: seeded batch order (the same generator then
    drives augmentation), one optimizer step per batch, evaluation at the budget's eval
    points with the optimizer's evaluation weights swapped in. Returns the last metric."""
    gen = data_generator(seed)
    batches = batch_indices(n_train, budget.batch_size, gen)
    handle = factory(model.parameters(), budget.steps)
    handle.train()
    metric = float("nan")
    for step in range(1, budget.steps + 1):
        idx = next(batches)
        handle.zero_grad()
        loss = batch_loss(idx, gen)
        loss.backward()
        handle.step(loss)
        log.train_step(step - 1, loss.detach(), handle)
        if is_eval_step(step, budget):
            with evaluating(model, handle):
                metric = evaluate()
            log.evaluate(step, metric)
    return metric


def classification_budgets(
    quick: tuple[int, int, int], full: tuple[int, int, int]
) -> dict[str, Budget]:
    """Budgets from (steps, batch, test_size) for quick and full.

    quick trains on the first 10k training images and evaluates twice; full uses all 60k
    and evaluates three times; tiny (tests) is 4 steps on 256 images.
    """
    tiny = Budget("tiny", 4, 16, 2, {"train_size": 256, "test_size": 64})
    q_steps, q_batch, q_test = quick
    f_steps, f_batch, f_test = full
    return {
        "tiny": tiny,
        "quick": Budget(
            "quick", q_steps, q_batch, q_steps // 2, {"train_size": 10_000, "test_size": q_test}
        ),
        "full": Budget(
            "full", f_steps, f_batch, f_steps // 3, {"train_size": 60_000, "test_size": f_test}
        ),
    }


class ResNet20Task(FashionClassificationTask):
    """ResNet-20 without BN (Fixup-style init, see models/resnet.py) on Fashion-MNIST."""

    name = "resnet20-fmnist"
    budgets: ClassVar[dict[str, Budget]] = classification_budgets(
        quick=(80, 32, 1000), full=(210, 32, 2000)
    )

    def build_model(self) -> nn.Module:
        return resnet20(in_channels=1)


class VGGTask(FashionClassificationTask):
    """A six-conv VGG-style net without BN on Fashion-MNIST."""

    name = "vgg-fmnist"
    budgets: ClassVar[dict[str, Budget]] = classification_budgets(
        quick=(100, 32, 1000), full=(300, 32, 2000)
    )

    def build_model(self) -> nn.Module:
        return SmallVGG(in_channels=1)
