"""The vision tasks run end to end on real data at the tiny budget, reproducibly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrfree.bench.data import fashion_mnist as fm
from lrfree.bench.tasks.base import TrainLog
from lrfree.bench.tasks.image import ResNet20Task, VGGTask
from lrfree.bench.tasks.segmentation import UNetSegTask, mean_iou
from lrfree.bench.tasks.ssl import SimCLRTask, nt_xent, ridge_probe_accuracy
from lrfree.bench.tasks.vit import ViTTask

FMNIST_TASKS = [ResNet20Task, VGGTask, ViTTask, SimCLRTask]
needs_fmnist = pytest.mark.skipif(
    not all((fm.SYSTEM_DIR / name).is_file() for name in fm.GZ_MD5)
    and not (fm.default_data_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST missing: apt-get install {fm.APT_PACKAGE}",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny conv workloads run slower with several threads on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class AdamHandle:
    """The smallest OptimizerHandle: Adam, and a record of the train/eval calls."""

    def __init__(self, params, total_steps: int, lr: float = 1e-3) -> None:
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.total_steps = total_steps
        self.calls: list[str] = []
        self.initial = [
            p.detach().clone() for g in self.optimizer.param_groups for p in g["params"]
        ]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self, loss: torch.Tensor) -> None:
        assert torch.isfinite(loss)
        self.calls.append("step")
        self.optimizer.step()

    def train(self) -> None:
        self.calls.append("train")

    def eval(self) -> None:
        self.calls.append("eval")

    def effective_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def _run(task, seed: int = 0, lr: float = 1e-3) -> tuple[float, TrainLog, AdamHandle]:
    handles: list[AdamHandle] = []

    def factory(params, total_steps):
        handles.append(AdamHandle(params, total_steps, lr))
        return handles[-1]

    log = TrainLog(log_every=1)
    metric = task.run(factory, seed, "tiny", log)
    return metric, log, handles[0]


@pytest.mark.parametrize(
    "task_cls",
    [pytest.param(t, marks=needs_fmnist) for t in FMNIST_TASKS] + [UNetSegTask],
    ids=lambda t: t.name,
)
def test_tiny_run_is_finite_and_reproducible(task_cls):
    task = task_cls()
    budget = task.budget("tiny")
    metric, log, handle = _run(task)
    assert math.isfinite(metric) and 0.0 <= metric <= 1.0
    assert log.steps == list(range(budget.steps))
    assert log.eval_steps[-1] == budget.steps and log.eval_metric[-1] == metric
    assert handle.total_steps == budget.steps
    assert handle.calls.count("step") == budget.steps
    # Every evaluation is bracketed by eval() ... train(), and training starts in train mode.
    assert handle.calls[0] == "train"
    assert handle.calls.count("eval") == len(log.eval_steps)
    assert handle.calls[-2:] == ["eval", "train"]
    for name in task_cls.budgets:
        assert task.budget(name).name == name

    torch.manual_seed(1234)  # the global RNG must not matter: init and data have their own
    metric2, log2, handle2 = _run(task_cls())
    assert metric2 == metric and log2.as_dict() == log.as_dict()
    assert all(torch.equal(a, b) for a, b in zip(handle.initial, handle2.initial))


@needs_fmnist
def test_seed_changes_init_but_not_the_optimizer_does_not():
    task = VGGTask()
    _, log_a, handle_a = _run(task, seed=0, lr=1e-3)
    _, log_b, handle_b = _run(task, seed=0, lr=0.0)
    _, _, handle_c = _run(task, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(handle_a.initial, handle_b.initial))
    assert not all(torch.equal(a, c) for a, c in zip(handle_a.initial, handle_c.initial))
    # Same init and same first batch, so the first loss agrees whatever the lr.
    assert log_a.train_loss[0] == log_b.train_loss[0]


def test_nt_xent_matches_a_loop():
    z = torch.randn(6, 4)
    zn = F.normalize(z, dim=1)
    total = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        logits = [float(zn[i] @ zn[j]) / 0.5 for j in range(6) if j != i]
        positive = float(zn[i] @ zn[partner]) / 0.5
        total += -positive + math.log(sum(math.exp(v) for v in logits))
    assert nt_xent(z, 0.5).item() == pytest.approx(total / 6, rel=1e-5)


def test_mean_iou_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    # class 0: 1/3, class 1: 2/3, class 2: 0/1, class 3 absent from both: skipped.
    assert mean_iou(pred, target, 4) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_ridge_probe_separates_separable_data():
    gen = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(3, 8, generator=gen)
    y = torch.arange(300) % 3
    feats = centers[y] + torch.randn(300, 8, generator=gen)
    assert ridge_probe_accuracy(feats[:200], y[:200], feats[200:], y[200:], num_classes=3) == 1.0
