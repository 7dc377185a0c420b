"""The contract between benchmark tasks and the optimizers they train with.

A task builds its model and data from a seed, asks the `OptimizerFactory` for an
`OptimizerHandle`, trains for the budget's number of steps, and reports curves through
a `TrainLog`. The task never knows which optimizer it drives: the handle hides the
differences (Polyak methods need the loss, schedule-free methods need train/eval, every
method with an lr gets the task's schedule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch


class OptimizerHandle(Protocol):
    """What a task calls. Built by the runner for one (optimizer, task, seed)."""

    optimizer: torch.optim.Optimizer

    def zero_grad(self) -> None: ...

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step after `loss.backward()`; also advances the lr schedule."""

    def train(self) -> None:
        """Call before training steps (schedule-free / averaging swap back)."""

    def eval(self) -> None:
        """Call before evaluating the model (schedule-free / averaging swap in)."""

    def effective_lr(self) -> float:
        """The lr torch.optim.Adam (or SGD) would need to take this step; nan if unknown."""


# params: an iterable of tensors or of param-group dicts; total_steps: for the schedule.
OptimizerFactory = Callable[[Iterable[Any], int], OptimizerHandle]


class Diverged(RuntimeError):
    """Raised by TrainLog when the loss is non-finite or blows up; the runner records it."""


@dataclass
class TrainLog:
    """Curves of one run. Tasks call `train_step` every step and `evaluate` at eval points."""

    log_every: int = 10
    blowup_factor: float = 1e3
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    effective_lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)
    _first_loss: float | None = None
    _running: float = 0.0
    _count: int = 0

    def train_step(self, step: int, loss: torch.Tensor | float, handle: OptimizerHandle) -> None:
        """Record the training loss; raises Diverged on NaN/inf or a blow-up of the loss.

        Only every `log_every`-th step reads the loss on the host, so the check costs
        one sync per `log_every` steps.
        """
        if step % self.log_every != 0:
            return
        value = float(loss)
        if not math.isfinite(value):
            raise Diverged(f"non-finite loss {value} at step {step}")
        if self._first_loss is None:
            self._first_loss = abs(value) + 1e-12
        elif abs(value) > self.blowup_factor * self._first_loss + 10.0:
            raise Diverged(f"loss {value} blew up (first {self._first_loss}) at step {step}")
        self.steps.append(step)
        self.train_loss.append(value)
        self.effective_lr.append(handle.effective_lr())

    def evaluate(self, step: int, metric: float) -> None:
        self.eval_steps.append(step)
        self.eval_metric.append(float(metric))

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {
            "steps": self.steps,
            "train_loss": self.train_loss,
            "effective_lr": self.effective_lr,
            "eval_steps": self.eval_steps,
            "eval_metric": self.eval_metric,
        }


@dataclass(frozen=True)
class Budget:
    """Sizes for one budget level; tasks read what they need."""

    name: str  # "tiny" (tests), "quick" (README main job), "full"
    steps: int
    batch_size: int
    eval_every: int
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str  # e.g. "resnet20-fmnist"
    family: str  # "image", "vit", "rl", "finetune", "segmentation", "ssl", "convex"
    metric: str  # e.g. "test_acc", "mIoU", "return", "suboptimality"
    higher_is_better: bool

    def budget(self, level: str) -> Budget: ...

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Train with a fresh optimizer from `factory` and return the final metric.

        Same seed => same initial weights and same data order, whatever the optimizer.
        The model and each batch live on `device`; weights are initialised on the CPU
        and moved, so a seed starts from the same weights on every device.
        """
        ...
