"""A task built from the user's own code: `python -m lrfree.bench --task mypkg.mytask:make`.

`make()` returns a `UserSetup` (or a dict with the same keys): the model, the training
batches, the evaluation batches, the loss and the metric. The bench then trains a fresh
copy for every optimizer and seed exactly as it trains its own tasks: same seed, same
initial weights and batch order whatever the optimizer; the records, resuming, report and
plots are the same too.

The target is `module:function` (a module importable from the current directory or the
path) or `path/to/file.py:function`.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lrfree.bench.tasks.base import Budget, OptimizerFactory, TrainLog

# What a user task runs unless --optimizers says otherwise: ours, the LR-free peers, and
# a three-point Adam sweep that the grid-edge rule extends until its best lr is inside.
USER_PLAN = ["psdasgd", "psdasgd-sf", "pssps", "adam@3e-4", "adam@1e-3", "adam@3e-3", "peers"]


@dataclass
class UserSetup:
    """What `make()` returns.

    model: the network (moved to the bench's device).
    train: an iterable of `(inputs, target)` batches, e.g. a `DataLoader`; iterated again
        when exhausted until `steps` updates are done. Shuffling draws from torch's global
        RNG, which the bench seeds before calling `make()`, so every optimizer sees the
        same order.
    eval: an iterable of `(inputs, target)` batches for the metric.
    loss: `loss(model(inputs), target) -> scalar tensor` (e.g. `F.cross_entropy`).
    metric: `metric(outputs, targets) -> float`, called once on the model's outputs for
        all `eval` batches concatenated (so non-decomposable metrics work).
    steps: optimizer updates per run (default: one pass over `train`, which must then
        have a length).
    eval_every: evaluate after every this many updates, and at the end (default: steps // 4).
    higher_is_better: the metric's direction (default True, e.g. accuracy).
    metric_name: how the report names the metric.
    """

    model: torch.nn.Module
    train: Iterable[Any]
    eval: Iterable[Any]
    loss: Callable[[Any, Any], torch.Tensor]
    metric: Callable[[Any, Any], float]
    steps: int | None = None
    eval_every: int | None = None
    higher_is_better: bool = True
    metric_name: str = "metric"


def load_target(target: str) -> Callable[..., Any]:
    """The function named by `module:function` or `path/to/file.py:function`."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--task {target!r}: a user task is 'module:function' or "
                         "'path/to/file.py:function', e.g. mypkg.mytask:make")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"--task {target!r}: no file {path}")
        spec = importlib.util.spec_from_file_location(f"lrfree_user_task_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            # `python -m` puts the current directory on the path; the console script does not
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    function = getattr(module, attr, None)
    if not callable(function):
        raise AttributeError(f"--task {target!r}: {module_name} has no function {attr!r}")
    return function


def _setup(made: Any, target: str) -> UserSetup:
    if isinstance(made, UserSetup):
        return made
    if isinstance(made, Mapping):
        known = {f.name for f in fields(UserSetup)}
        unknown = set(made) - known
        if unknown:
            raise TypeError(f"--task {target}: make() returned unknown keys {sorted(unknown)}; "
                            f"the keys are {sorted(known)}")
        return UserSetup(**made)
    raise TypeError(f"--task {target}: make() must return lrfree.bench.UserSetup or a dict "
                    f"with its keys, not {type(made).__name__}")


def _to(value: Any, device: torch.device | str) -> Any:
    """`value` with every tensor in it (nested tuples, lists, dicts) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _split(batch: Any, target: str) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"--task {target}: a batch must be an (inputs, target) pair, got "
                        f"{type(batch).__name__}; wrap your loader to yield pairs")
    return batch[0], batch[1]


def _cycle(data: Iterable[Any], target: str) -> Iterator[Any]:
    """The batches of `data`, epoch after epoch."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"--task {target}: the train batches ran out (a one-shot "
                             "generator?); return a list or a DataLoader, which iterate again")


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return parts


class UserTask:
    """The benchmark task built by the function `target` names."""

    family = "user"

    def __init__(self, target: str) -> None:
        self.target = target
        self.make = load_target(target)
        self.name = target
        self._probe: UserSetup | None = None

    def _made(self) -> UserSetup:
        self._probe = _setup(self.make(), self.target)
        return self._probe

    def _described(self) -> UserSetup:
        # A first call fixes the name of the metric, its direction and the step count (for
        # the report and the budget); runs call make() afresh after seeding.
        return self._probe if self._probe is not None else self._made()

    @property
    def metric(self) -> str:
        return self._described().metric_name

    @property
    def higher_is_better(self) -> bool:
        return self._described().higher_is_better

    def budget(self, level: str) -> Budget:
        """The same for every level: the user's task defines its own length."""
        return self._budget_of(self._described(), level)

    def _budget_of(self, setup: UserSetup, level: str) -> Budget:
        steps = setup.steps
        if steps is None:
            if not hasattr(setup.train, "__len__"):
                raise ValueError(f"--task {self.target}: make() returned a train iterable "
                                 "without a length; set 'steps' (updates per run)")
            steps = len(setup.train)  # type: ignore[arg-type]
        if steps < 1:
            raise ValueError(f"--task {self.target}: steps must be >= 1, got {steps}")
        every = setup.eval_every or max(1, steps // 4)
        return Budget(level, steps, batch_size=0, eval_every=every)

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Train a fresh model from make() on `device`; returns the final metric."""
        setup = self._made()  # after the runner seeded torch: the seed's initial weights
        budget = self._budget_of(setup, level)
        model = setup.model.to(device)
        handle = factory(model.parameters(), budget.steps)
        handle.train()
        model.train()
        batches = _cycle(setup.train, self.target)
        metric = math.nan
        for step in range(1, budget.steps + 1):
            inputs, target = _split(_to(next(batches), device), self.target)
            handle.zero_grad()
            loss = setup.loss(model(inputs), target)
            loss.backward()
            handle.step(loss.detach())
            log.train_step(step - 1, loss.detach(), handle)
            if step % budget.eval_every == 0 or step == budget.steps:
                metric = self._evaluate(setup, model, handle, device)
                log.evaluate(step, metric)
        return metric

    def _evaluate(self, setup: UserSetup, model: torch.nn.Module, handle: Any,
                  device: torch.device | str) -> float:
        handle.eval()
        model.eval()
        try:
            outputs, targets = [], []
            with torch.no_grad():
                for batch in setup.eval:
                    inputs, target = _split(_to(batch, device), self.target)
                    outputs.append(model(inputs))
                    targets.append(target)
            if not outputs:
                raise ValueError(f"--task {self.target}: the eval batches are empty")
            return float(setup.metric(_cat(outputs), _cat(targets)))
        finally:
            model.train()
            handle.train()
