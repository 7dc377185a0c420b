"""SimCLR-style contrastive pretraining on Fashion-MNIST, scored by a linear probe.

Pretraining (Chen et al. 2020): two augmented views of each image (random resized crop with
flip, brightness/contrast jitter, Gaussian noise) go through a conv encoder and an MLP
projector; the NT-Xent loss pulls the two views of an image together and pushes the other
2B - 2 views away. Labels are never used in training.

Score: a linear probe on the frozen encoder features (projector dropped), fitted in closed
form by ridge regression onto one-hot labels. It has no optimizer, learning rate or
iteration count, so it is the same for every optimizer under test and cannot favour one.
Baselines: the probe on the randomly initialised encoder scores ~0.70 (quick sizes); on raw
pixels ~0.77; Adam(1e-3) pretraining reaches 0.72 (quick) and 0.75 (full). Cost per run, one
thread (CPU seconds): quick 18 s, full 53 s.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lrfree.bench.data.augment import jitter_and_noise, random_resized_crop
from lrfree.bench.data.batches import batch_indices
from lrfree.bench.data.fashion_mnist import load_fashion_mnist
from lrfree.bench.models import ConvEncoder, build_seeded
from lrfree.bench.tasks.base import Budget, OptimizerFactory, TrainLog
from lrfree.bench.tasks.image import EVAL_BATCH, data_generator, evaluating, is_eval_step

TEMPERATURE = 0.5
RIDGE = 1e-2  # relative to the (standardised) feature scale: strong enough to be well posed


class SimCLRModel(nn.Module):
    def __init__(self, feature_dim: int = 64, projection_dim: int = 32) -> None:
        super().__init__()
        self.encoder = ConvEncoder(in_channels=1, width=16, out_dim=feature_dim)
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, projection_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent loss for 2B embeddings where rows i and i + B are views of the same image."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(n, device=z.device).roll(n // 2)
    return F.cross_entropy(logits, partner)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return jitter_and_noise(random_resized_crop(x, gen), gen)


def ridge_probe_accuracy(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    test_feats: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int = 10,
    ridge: float = RIDGE,
) -> float:
    """Accuracy of a closed-form ridge-regression classifier on standardised features."""
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6

    def design(feats: torch.Tensor) -> torch.Tensor:
        z = ((feats - mean) / std).double()
        return torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)

    a = design(train_feats)
    targets = F.one_hot(train_y, num_classes).double()
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, a.T @ targets)
    pred = (design(test_feats) @ weights).argmax(1)
    return float((pred == test_y).double().mean())


def _features(encoder: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
    """Encoder features of `x` (computed on `device`, returned on the CPU for the probe)."""
    return torch.cat([encoder(x[i : i + EVAL_BATCH].to(device)).cpu()
                      for i in range(0, len(x), EVAL_BATCH)])


class SimCLRTask:
    name = "simclr-fmnist"
    family = "ssl"
    metric = "probe_acc"
    higher_is_better = True
    # train_size: unlabelled pretraining images; probe_size: labelled training images for the
    # probe (the first ones of the training set); test_size: test images scored.
    budgets: ClassVar[dict[str, Budget]] = {
        "tiny": Budget("tiny", 3, 16, 3, {"train_size": 256, "probe_size": 256, "test_size": 128}),
        "quick": Budget(
            "quick", 100, 64, 50, {"train_size": 10_000, "probe_size": 2000, "test_size": 1000}
        ),
        "full": Budget(
            "full", 300, 64, 150, {"train_size": 60_000, "probe_size": 5000, "test_size": 2000}
        ),
    }

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def budget(self, level: str) -> Budget:
        return self.budgets[level]

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Pretrain on `device` (views augmented on the CPU, moved there per batch); returns
        the final linear-probe accuracy."""
        budget = self.budget(level)
        extra = budget.extra
        x_train, _ = load_fashion_mnist("train", data_dir=self.data_dir, subset=extra["train_size"])
        x_probe, y_probe = load_fashion_mnist(
            "train", data_dir=self.data_dir, subset=extra["probe_size"]
        )
        x_test, y_test = load_fashion_mnist(
            "test", data_dir=self.data_dir, subset=extra["test_size"]
        )
        model = build_seeded(SimCLRModel, seed).to(device)
        gen = data_generator(seed)
        batches = batch_indices(len(x_train), budget.batch_size, gen)
        handle = factory(model.parameters(), budget.steps)
        handle.train()
        metric = float("nan")
        for step in range(1, budget.steps + 1):
            xb = x_train[next(batches)]
            views = torch.cat([augment(xb, gen), augment(xb, gen)]).to(device)
            handle.zero_grad()
            loss = nt_xent(model(views))
            loss.backward()
            handle.step(loss)
            log.train_step(step - 1, loss.detach(), handle)
            if is_eval_step(step, budget):
                with evaluating(model, handle):
                    metric = ridge_probe_accuracy(
                        _features(model.encoder, x_probe, device),
                        y_probe,
                        _features(model.encoder, x_test, device),
                        y_test,
                    )
                log.evaluate(step, metric)
        return metric
