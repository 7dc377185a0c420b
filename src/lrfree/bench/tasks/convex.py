"""Convex sanity task: L2-regularised multinomial logistic regression on sklearn's digits.

The objective has a known minimum, so the metric is the suboptimality f(x) − f* of the
full-batch objective, which is what an optimizer is for with nothing else in the way
(no generalisation gap, no augmentation). f* is computed independently, in float64, by
SciPy's L-BFGS on a NumPy closed-form gradient, to a gradient norm near machine precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from lrfree.bench.tasks.base import Budget, OptimizerFactory, TrainLog

L2 = 1e-3  # small enough to leave the problem ill-conditioned, large enough for a unique W*
_BUDGETS = {
    "tiny": Budget("tiny", steps=60, batch_size=64, eval_every=20),
    "quick": Budget("quick", steps=1500, batch_size=64, eval_every=100),
    "full": Budget("full", steps=10000, batch_size=64, eval_every=250),
}


@dataclass(frozen=True)
class _Problem:
    features: torch.Tensor  # float32, standardised
    labels: torch.Tensor
    f_star: float


def objective(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy plus (L2/2)·‖W‖² (the bias is not regularised)."""
    logits = features @ weight.T + bias
    return F.cross_entropy(logits, labels) + 0.5 * L2 * weight.pow(2).sum()


def _solve(features: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """min f in float64 with NumPy's closed-form gradient (independent of the torch path)."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax
    from threadpoolctl import threadpool_limits

    n, dim = features.shape
    onehot = np.eye(classes)[labels]

    def value_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = flat[: classes * dim].reshape(classes, dim), flat[classes * dim:]
        logp = log_softmax(features @ weight.T + bias, axis=1)
        value = -np.sum(onehot * logp) / n + 0.5 * L2 * np.sum(weight**2)
        residual = (np.exp(logp) - onehot) / n
        grad_w = residual.T @ features + L2 * weight
        return value, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    start = np.zeros(classes * (dim + 1))
    # One BLAS thread: these matrices are small, and threads spin-waiting on a busy machine
    # made the solve 10x slower.
    with threadpool_limits(1):
        result = minimize(value_and_grad, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": 20000, "maxcor": 50, "gtol": 1e-13, "ftol": 1e-16})
    return float(result.fun)


@lru_cache(maxsize=1)
def _problem() -> _Problem:
    from sklearn.datasets import load_digits

    data = load_digits()
    features = data.data.astype(np.float64)
    std = features.std(axis=0)
    # Border pixels are constant zero in every image; leave them at zero rather than divide by 0.
    features = (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)
    labels = data.target.astype(np.int64)
    f_star = _solve(features, labels, classes=int(labels.max()) + 1)
    return _Problem(torch.from_numpy(features), torch.from_numpy(labels), f_star)


class LogRegTask:
    """Multinomial logistic regression on 1,797 standardised 8x8 digits (64 → 10), L2 = 1e-3."""

    name = "logreg-digits"
    family = "convex"
    metric = "suboptimality"
    higher_is_better = False
    max_threads = 1  # 64x10 weights: threads only add synchronisation (read by the runner)

    def budget(self, level: str) -> Budget:
        """Steps / batch / eval interval for `level` in tiny, quick, full."""
        return _BUDGETS[level]

    def prepare(self, level: str) -> None:
        """Load the data and solve for f* once, so that run times measure training only."""
        _problem()

    def suboptimality(self, model: torch.nn.Linear) -> float:
        """f(x) − f* of the full-batch objective, evaluated in float64 on the CPU."""
        problem = _problem()
        with torch.no_grad():
            value = objective(model.weight.double().cpu(), model.bias.double().cpu(),
                              problem.features, problem.labels)
        return float(value) - problem.f_star

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Mini-batch training from a seeded small random init; returns the final suboptimality."""
        budget = self.budget(level)
        problem = _problem()
        features = problem.features.float().to(device)
        labels = problem.labels.to(device)
        generator = torch.Generator().manual_seed(seed)
        model = torch.nn.Linear(features.shape[1], int(problem.labels.max()) + 1)
        with torch.no_grad():
            model.weight.normal_(0.0, 0.01, generator=generator)
            model.bias.zero_()
        model.to(device)  # initialised on the CPU: the same start on every device
        handle = factory(model.parameters(), budget.steps)
        n = features.shape[0]
        order = torch.randperm(n, generator=generator)
        cursor = 0
        for step in range(budget.steps):
            if step % budget.eval_every == 0:
                handle.eval()
                log.evaluate(step, self.suboptimality(model))
                handle.train()
            if cursor + budget.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            index = order[cursor: cursor + budget.batch_size].to(device)
            cursor += budget.batch_size
            loss = objective(model.weight, model.bias, features[index], labels[index])
            handle.zero_grad()
            loss.backward()
            handle.step(loss.detach())
            log.train_step(step, loss.detach(), handle)
        handle.eval()
        final = self.suboptimality(model)
        log.evaluate(budget.steps, final)
        return final
