"""Benchmark lrfree against tuned Adam and the LR-free peers on your own model.

    python -m lrfree.bench --task examples/bench_your_model.py:make

`make()` returns your model, your train and eval batches, your loss and your metric; the
bench trains a fresh copy with PS-DA-SGD, PS-SPS, the LR-free peers and an Adam sweep
(extended until its best lr is inside the grid), one seed by default (`--seeds 3` for
three), and writes a report with plots to bench-out/quick/. Runs offline: the data is
scikit-learn's bundled 8x8 digits (`pip install -e ".[bench]"`). About a minute on one
CPU thread.

Replace the body of `make()` with your own model and loaders. torch's global RNG is
seeded before each call, so the initial weights and a shuffling DataLoader's order are
the same for every optimizer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def make() -> dict:
    x, y = _digits()
    train = TensorDataset(x[:1400], y[:1400])
    test = TensorDataset(x[1400:], y[1400:])
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    return {
        "model": model,
        "train": DataLoader(train, batch_size=64, shuffle=True),
        "eval": DataLoader(test, batch_size=256),
        "loss": F.cross_entropy,
        "metric": accuracy,
        "metric_name": "test_acc",
        "higher_is_better": True,
        "steps": 300,  # about 14 epochs of 22 batches
    }
