"""PyTorch Lightning with lrfree optimizers.

Return the optimizer from ``configure_optimizers`` as usual. Lightning's automatic
optimization calls ``optimizer.step(closure)``, and the closure returns the loss, so
``PSSPS`` gets its loss with nothing more, as long as each optimizer step sees one batch.
Two cases need :class:`AccumulatedLoss`:

- ``accumulate_grad_batches=n``: the closure returns only the last micro-batch's loss
  divided by n, while the gradient is that of the sum over the n micro-batches;
- ``precision="16-mixed"``: Lightning runs the closure itself and steps through the
  ``GradScaler`` with no loss at all.

::

    from lrfree.integrations.lightning import AccumulatedLoss, EstimatedLRMonitor

    trainer = L.Trainer(accumulate_grad_batches=4,
                        callbacks=[AccumulatedLoss(), EstimatedLRMonitor()])

:class:`EstimatedLRMonitor` logs the estimate (``effective_lr``, ``d`` or ``polyak_step``,
...) through ``LightningModule.log``, so every logger receives it. :class:`EvaluateAtAverage`
validates, tests and checkpoints ``PSDASGD(schedule_free=True)`` (or ``average=True``) at its
averaged weights.
"""
from __future__ import annotations

from typing import Any

import torch

from lrfree.integrations._common import LossFeed, learning_rate_scalars, missing

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback  # the standalone package
    except ImportError as exc:
        raise missing("lightning", "lightning (or pytorch-lightning)") from exc


class AccumulatedLoss(Callback):
    """Hands the optimizers that read the loss (``needs_loss``: ``PSSPS``, ``SPS``,
    ``PSDASGD(warmup="polyak")``) the loss of the whole accumulated
    batch: the sum of the losses back-propagated since the gradients were last zeroed
    (each already divided by ``accumulate_grad_batches``, as Lightning does), unscaled
    under a ``GradScaler``. Optimizers that do not need the loss are left alone."""

    def __init__(self) -> None:
        self._feed = LossFeed()
        self._hooks: list[Any] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        for optimizer in trainer.optimizers:
            if getattr(optimizer, "needs_loss", False):
                self._hooks.append(self._feed.attach(optimizer))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._feed.reset()

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # the scaler multiplied the loss before this hook: hand on the loss itself
            loss = loss.detach() / scaler.get_scale()
        self._feed.add(loss)


class EstimatedLRMonitor(Callback):
    """Logs the learning rate of each param group and the estimate after every optimizer
    step, like Lightning's ``LearningRateMonitor`` logs the scheduled ``lr``.

    Keys, under ``prefix`` (default ``"lrfree/"``): ``effective_lr`` (``effective_lr/group{i}``
    with several groups; an optimizer without an estimate logs its ``lr``), then whichever
    of ``d``, ``d_hat``, ``polyak_step``, ``dog_step`` it exposes. With several optimizers
    the keys get ``/opt{j}``. Logged on the step, at Lightning's ``log_every_n_steps``.
    """

    def __init__(self, prefix: str = "lrfree/") -> None:
        self.prefix = prefix

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        values: dict[str, float] = {}
        several = len(trainer.optimizers) > 1
        for j, optimizer in enumerate(trainer.optimizers):
            suffix = f"/opt{j}" if several else ""
            for key, value in learning_rate_scalars(optimizer).items():
                values[f"{self.prefix}{key}{suffix}"] = value
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)


class EvaluateAtAverage(Callback):
    """Validation, testing, prediction and checkpoints at the averaged weights of
    ``PSDASGD(schedule_free=True)`` or ``average=True``; training at the training point.

    Calls ``optimizer.eval()`` when validation, testing or prediction starts and when a
    checkpoint is saved, and ``optimizer.train()`` when they end and when a training batch
    starts (both are idempotent, so the order of Lightning's hooks does not matter). The
    model is left at the average when ``fit`` ends, for export. Optimizers without
    ``eval``/``train`` (torch's own) are left alone.
    """

    @staticmethod
    def _each(trainer: Any, method: str) -> None:
        for optimizer in trainer.optimizers:
            switch = getattr(optimizer, method, None)
            if callable(switch):
                switch()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self._each(trainer, "train")

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._each(trainer, "eval")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._each(trainer, "train")

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._each(trainer, "eval")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._each(trainer, "eval")

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        self._each(trainer, "eval")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._each(trainer, "eval")
