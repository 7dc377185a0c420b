"""Optimizer configurations for the benchmark: name -> factory of an `OptimizerHandle`.

Names:
  ours (defaults, untuned)   psdasgd, psdasgd-avg, psdasgd-sf, pssps, sps, dadaptsgd
  hand-tuned baselines        adam@<lr>, adam-avg@<lr>, sgdm@<lr>   (any lr parses; the sweeps
                              below are the registered grid); sf-adamw@<lr> (schedule-free
                              AdamW at a set lr: an ablation row, not ranked)
  LR-free peers (defaults)    dadapt-adam, prodigy, dog, sf-adamw, momsps

Every method with an lr gets the task's schedule (cosine to zero over the run, no warmup, as
a LambdaLR multiplier), except schedule-free AdamW, PS-DA-SGD's schedule-free iteration
(psdasgd-sf) and MomSPS, which have none to schedule (ALGORITHMS.md §8). Peer packages and
our own classes are imported inside the builders, so this module imports even when one of
them is missing.

Weight decay is 0 everywhere except the `wd0.1` preset (`psdasgd-wd0.1` and the sweep
`adamw-wd0.1@<lr>`: decoupled decay 0.1 on every parameter, ablation rows); a task that wants
decay passes param-group dicts carrying `weight_decay`, which every optimizer here honours
through torch's group defaults.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lrfree.bench.tasks.base import OptimizerFactory, OptimizerHandle

SCHEDULES = ("cosine", "none")
SWEEP_LRS_ADAM = ("1e-4", "3e-4", "1e-3", "3e-3", "1e-2")
SWEEP_LRS_SGD = ("1e-3", "3e-3", "1e-2", "3e-2", "1e-1")
AVERAGE_POWER = 8.0

Builder = Callable[[list[Any]], torch.optim.Optimizer]


def _nan(_: torch.optim.Optimizer) -> float:
    return math.nan


def _group_lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0]["lr"])


def _group_effective_lr(opt: torch.optim.Optimizer) -> float:
    value = opt.param_groups[0].get("effective_lr")
    return math.nan if value is None else float(value)


def _d_times_lr(opt: torch.optim.Optimizer) -> float:
    group = opt.param_groups[0]
    return float(group["d"]) * float(group["lr"])


def _dog_eta(opt: torch.optim.Optimizer) -> float:
    # DoG fills `eta` (one entry per parameter, all equal for the global variant) at its first step.
    eta = opt.param_groups[0].get("eta")
    return float(eta[0]) if eta else math.nan


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one configuration and how its handle must drive it."""

    name: str
    family: str  # "ours", "adam", "adam-avg", "sgd", "peer"
    build: Builder
    effective_lr: Callable[[torch.optim.Optimizer], float]
    lr: float | None = None  # the hand-set lr of a sweep member
    scheduled: bool = True  # has an lr the task's schedule multiplies
    pass_loss: bool = False  # step(loss=...)
    train_eval: bool = False  # the optimizer itself has train()/eval()
    averaged: bool = False  # the handle keeps a k^p iterate average and evaluates at it


class IterateAverage:
    """Weighted average of the iterates with weights w_k = k^power.

        x̄_k = x̄_{k-1} + (w_k / W_k)(x_k − x̄_{k-1}),   W_k = Σ_{j≤k} w_j

    W_k itself overflows float32 near k = 6·10⁴ for power 8, so only the ratio
    q_k = W_k / w_k = 1 + q_{k-1}·((k−1)/k)^power is kept (ALGORITHMS.md §4b).
    `swap_in()` puts x̄ into the parameters for evaluation, `swap_out()` restores x.
    """

    def __init__(self, params: Iterable[torch.Tensor], power: float = AVERAGE_POWER) -> None:
        self.params = list(params)
        self.power = power
        self.k = 0
        self.ratio = 0.0
        self.average = [p.detach().clone() for p in self.params]
        self._saved: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (call after each optimizer step)."""
        if self._saved is not None:
            raise RuntimeError("update() while the average is swapped in; call swap_out() first")
        self.k += 1
        self.ratio = 1.0 + self.ratio * ((self.k - 1) / self.k) ** self.power
        weight = 1.0 / self.ratio
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)

    @torch.no_grad()
    def swap_in(self) -> None:
        """Replace the parameters by x̄ (idempotent)."""
        if self._saved is None:
            self._saved = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.average):
                p.copy_(a)

    @torch.no_grad()
    def swap_out(self) -> None:
        """Restore the training iterate x (idempotent)."""
        if self._saved is not None:
            for p, s in zip(self.params, self._saved):
                p.copy_(s)
            self._saved = None


def cosine_multiplier(total_steps: int) -> Callable[[int], float]:
    """lr multiplier for step k: cosine from 1 to 0 over `total_steps`, no warmup."""

    def multiplier(k: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(k, total_steps) / max(total_steps, 1)))

    return multiplier


class Handle:
    """The `OptimizerHandle` for every configuration; `spec` says what differs."""

    def __init__(self, spec: OptimizerSpec, params: Iterable[Any], total_steps: int,
                 schedule: str) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
        self.spec = spec
        self.optimizer = spec.build(list(params))
        self.scheduler = None
        if spec.scheduled and schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, cosine_multiplier(total_steps)
            )
        self.average = None
        if spec.averaged:
            self.average = IterateAverage(
                p for g in self.optimizer.param_groups for p in g["params"]
            )
        self.train()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss: torch.Tensor) -> None:
        if self.spec.pass_loss:
            self.optimizer.step(loss=loss)
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.average is not None:
            self.average.update()

    def train(self) -> None:
        if self.spec.train_eval:
            self.optimizer.train()  # type: ignore[attr-defined]
        if self.average is not None:
            self.average.swap_out()

    def eval(self) -> None:
        if self.spec.train_eval:
            self.optimizer.eval()  # type: ignore[attr-defined]
        if self.average is not None:
            self.average.swap_in()

    def effective_lr(self) -> float:
        return self.spec.effective_lr(self.optimizer)


def _ours(class_name: str, **kwargs: Any) -> Builder:
    def build(params: list[Any]) -> torch.optim.Optimizer:
        import lrfree

        return getattr(lrfree, class_name)(params, **kwargs)

    return build


def _peer(module: str, class_name: str, **kwargs: Any) -> Builder:
    def build(params: list[Any]) -> torch.optim.Optimizer:
        import importlib

        return getattr(importlib.import_module(module), class_name)(params, **kwargs)

    return build


def _adam(lr: float) -> Builder:
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _adamw(lr: float, weight_decay: float) -> Builder:
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgdm(lr: float) -> Builder:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9)


_FIXED: dict[str, OptimizerSpec] = {
    s.name: s
    for s in [
        # train_eval: without a schedule the defaults take the schedule-free iteration,
        # evaluated at its average as documented; under one, eval()/train() do nothing
        OptimizerSpec("psdasgd", "ours", _ours("PSDASGD"), _group_effective_lr, pass_loss=True,
                      train_eval=True),
        OptimizerSpec("psdasgd-avg", "ours", _ours("PSDASGD", average=True), _group_effective_lr,
                      pass_loss=True, train_eval=True),
        # the schedule-free iteration (docs/algorithms.md §4h): never scheduled, evaluated
        # at its average (opt.eval())
        OptimizerSpec("psdasgd-sf", "ours", _ours("PSDASGD", schedule_free=True),
                      _group_effective_lr, scheduled=False, pass_loss=True, train_eval=True),
        OptimizerSpec("pssps", "ours", _ours("PSSPS"), _group_effective_lr, pass_loss=True),
        OptimizerSpec("psdog", "ours", _ours("PSDoG"), _group_effective_lr, pass_loss=True),
        OptimizerSpec("sps", "ours", _ours("SPS"), _group_effective_lr, pass_loss=True),
        OptimizerSpec("dadaptsgd", "ours", _ours("DAdaptSGD"), _group_effective_lr,
                      pass_loss=True),
        OptimizerSpec("dadapt-adam", "peer", _peer("dadaptation", "DAdaptAdam"), _d_times_lr),
        OptimizerSpec("prodigy", "peer", _peer("prodigyopt", "Prodigy"), _d_times_lr),
        OptimizerSpec("dog", "peer", _peer("dog", "DoG"), _dog_eta),
        OptimizerSpec("sf-adamw", "peer", _peer("schedulefree", "AdamWScheduleFree"), _group_lr,
                      scheduled=False, train_eval=True),
        OptimizerSpec("momsps", "peer", _peer("momsps", "MomSPS"), _nan, scheduled=False,
                      pass_loss=True),
        # Ablations of the choices the spec leaves open (family "ablation": not ranked).
        *[OptimizerSpec(name, "ablation", _ours(cls, **kw), _group_effective_lr,
                        pass_loss=True, train_eval=cls == "PSDASGD" or bool(kw.get("average")))
          for name, cls, kw in [
              ("psdasgd-running", "PSDASGD", {"alpha_norm": "running"}),
              ("psdasgd-nonorm", "PSDASGD", {"alpha_norm": "none"}),
              ("psdasgd-amsgrad", "PSDASGD", {"scaling": "amsgrad"}),
              ("psdasgd-dcoef0.5", "PSDASGD", {"d_coef": 0.5}),
              ("psdasgd-d0", "PSDASGD", {"d0": 1e-6}),  # the published start (scaled units)
              # no warm-up: starts at the best Adam lr of the full-budget sweeps (isolates
              # what the warm-up costs; not a usable default, it needs that lr)
              ("psdasgd-start3e-3", "PSDASGD", {"d0_lr": 3e-3}),
              # other starts (d never falls below its start): 1e-6, the default until
              # issue 17 and DAdaptAdam's and Prodigy's start; 1e-4, now the default (rows
              # measured before the change, kept as the ablation they were)
              ("psdasgd-start1e-6", "PSDASGD", {"d0_lr": 1e-6}),
              ("psdasgd-start1e-5", "PSDASGD", {"d0_lr": 1e-5}),
              ("psdasgd-start1e-4", "PSDASGD", {"d0_lr": 1e-4}),
              ("pssps-c0.2", "PSSPS", {"c": 0.2}),
              ("pssps-c1", "PSSPS", {"c": 1.0}),
              ("pssps-amsgrad", "PSSPS", {"scaling": "amsgrad"}),
              # the cap reaches the Polyak step in ~48 steps instead of ~233 (short runs)
              ("pssps-cap1.1", "PSSPS", {"cap_growth": 1.1}),
              # decoupled weight decay 0.1 (the AdamW value for transformers), against the
              # AdamW sweep with the same decay below (issue 15)
              ("psdasgd-wd0.1", "PSDASGD", {"weight_decay": 0.1}),
              # the Polyak warm-up (issue 17, docs/algorithms.md §4d): d starts at the
              # Polyak distance max(loss, 0) / ||g'||, or grows x3 per step towards it
              ("psdasgd-polyak", "PSDASGD", {"warmup": "polyak"}),
              ("psdasgd-polyak3", "PSDASGD", {"warmup": "polyak", "warmup_growth": 3.0}),
              # d may grow at most x2 / x1.5 / x1.25 per step (issue 17, docs/algorithms.md
              # §4g): a slower climb, against the early collapse on segmentation at the quick
              # budget; 1.5 is the default since
              ("psdasgd-growth2", "PSDASGD", {"growth_rate": 2.0}),
              ("psdasgd-growth1.5", "PSDASGD", {"growth_rate": 1.5}),
              ("psdasgd-growth1.25", "PSDASGD", {"growth_rate": 1.25}),
              ("psdasgd-growthinf", "PSDASGD", {"growth_rate": math.inf}),  # the published rule
              # the momentum step whether or not a scheduler is attached (the default's
              # "auto" takes it only under one): `--schedule none` runs what the default was
              # before "auto" for a loop without a scheduler (docs/algorithms.md §4h)
              ("psdasgd-momentum", "PSDASGD", {"schedule_free": False}),
          ]],
        # the schedule-free iteration (docs/algorithms.md §4h) under the task's cosine
        # schedule, and evaluated at y (what a loop without opt.eval() gets)
        OptimizerSpec("psdasgd-sf-cosine", "ablation", _ours("PSDASGD", schedule_free=True),
                      _group_effective_lr, pass_loss=True, train_eval=True),
        OptimizerSpec("psdasgd-sf-at-y", "ablation", _ours("PSDASGD", schedule_free=True),
                      _group_effective_lr, scheduled=False, pass_loss=True),
        # ... and with the estimate quartered: is the convex task's loss the overshoot (the
        # estimate settles ~7x above the best Adam lr on logreg) or the constant step?
        OptimizerSpec("psdasgd-sf-dcoef0.25", "ablation",
                      _ours("PSDASGD", schedule_free=True, d_coef=0.25), _group_effective_lr,
                      scheduled=False, pass_loss=True, train_eval=True),
        *[OptimizerSpec(f"adamw-wd0.1@{lr}", "ablation", _adamw(float(lr), 0.1), _group_lr,
                        lr=float(lr)) for lr in SWEEP_LRS_ADAM],
    ]
}

_SWEPT = re.compile(r"^(adam|adam-avg|sgdm|sf-adamw)@([0-9.]+(?:e-?[0-9]+)?)$")

PRESETS: dict[str, list[str]] = {
    "ours": ["psdasgd", "psdasgd-avg", "psdasgd-sf", "pssps", "sps", "dadaptsgd"],
    "adam-sweep": [f"adam@{lr}" for lr in SWEEP_LRS_ADAM],
    "adam-avg-sweep": [f"adam-avg@{lr}" for lr in SWEEP_LRS_ADAM],
    "sgd-sweep": [f"sgdm@{lr}" for lr in SWEEP_LRS_SGD],
    "peers": ["dadapt-adam", "prodigy", "dog", "sf-adamw", "momsps"],
}
PRESETS["all"] = [n for key in list(PRESETS) for n in PRESETS[key]]
# weight decay 0.1 (ViT, MiniLM): PSDASGD and the AdamW sweep with the same decay
PRESETS["wd0.1"] = ["psdasgd-wd0.1", *[f"adamw-wd0.1@{lr}" for lr in SWEEP_LRS_ADAM]]
PRESETS["ablations"] = [name for name, spec in _FIXED.items() if spec.family == "ablation"]
# What a run gets when it names tasks but no optimizers: ours, the Adam sweep, two peers.
PRESETS["default"] = ["psdasgd", "psdasgd-avg", "psdasgd-sf", "pssps", *PRESETS["adam-sweep"],
                      "prodigy", "sf-adamw"]


def get_spec(name: str) -> OptimizerSpec:
    """The configuration called `name` (a registered name or
    `adam|adam-avg|sgdm|sf-adamw@<lr>`)."""
    if name in _FIXED:
        return _FIXED[name]
    match = _SWEPT.match(name)
    if match is None:
        raise KeyError(f"unknown optimizer {name!r}; presets: {', '.join(PRESETS)}")
    family, lr = match.group(1), float(match.group(2))
    if family == "sgdm":
        return OptimizerSpec(name, "sgd", _sgdm(lr), _group_lr, lr=lr)
    if family == "sf-adamw":  # schedule-free AdamW at a hand-set lr: an ablation, not ranked
        return OptimizerSpec(name, "ablation",
                             _peer("schedulefree", "AdamWScheduleFree", lr=lr), _group_lr,
                             lr=lr, scheduled=False, train_eval=True)
    return OptimizerSpec(name, family, _adam(lr), _group_lr, lr=lr, averaged=family == "adam-avg")


def optimizer_names() -> list[str]:
    """Every registered configuration name."""
    return list(dict.fromkeys(PRESETS["all"] + list(_FIXED)))


def expand(names: Iterable[str]) -> list[str]:
    """Expand presets into optimizer names, keeping order and dropping repeats."""
    out: list[str] = []
    for name in names:
        for member in PRESETS.get(name, [name]):
            get_spec(member)
            if member not in out:
                out.append(member)
    return out


def make_factory(name: str, schedule: str = "cosine") -> OptimizerFactory:
    """The factory a task calls: (params, total_steps) -> handle for configuration `name`."""
    spec = get_spec(name)

    def factory(params: Iterable[Any], total_steps: int) -> OptimizerHandle:
        return Handle(spec, params, total_steps, schedule)

    return factory
