"""Hugging Face ``Trainer`` with lrfree optimizers.

PS-DA-SGD (and every optimizer that does not need the loss) works with a plain ``Trainer``:
``Trainer(..., optimizers=(lrfree.PSDASGD(model.parameters()), None))``. The Polyak
methods (``PSSPS``, ``SPS``) need the mini-batch loss at every step, and ``Trainer`` calls
``optimizer.step()`` without one; :class:`LRFreeTrainer` hands it over::

    from lrfree.integrations.huggingface import LRFreeTrainer

    opt = lrfree.PSSPS(model.parameters())
    trainer = LRFreeTrainer(model=model, args=args, train_dataset=train,
                            optimizers=(opt, None))
    trainer.train()

The loss handed to the step is the one ``Trainer`` back-propagated: with gradient
accumulation, the sum of the micro-batch losses each divided by the number of micro-batches
(what the accumulated gradient is the gradient of). ``LRFreeTrainer`` also adds the
estimate (``effective_lr``, ``d`` or ``polyak_step``, ...) to every training log, so it
reaches ``trainer.state.log_history`` and every ``report_to`` integration.
``EstimatedLRCallback`` does the logging for a plain ``Trainer``.

Note ``Trainer``'s defaults: ``max_grad_norm=1.0`` clips the gradient the optimizer sees
(with the Polyak step a clipped gradient makes the step larger, not smaller), and the
``learning_rate`` it logs is the scheduler's multiplier (1.0 by default), not the estimate.
With ``PSDASGD(schedule_free=True)`` (or ``average=True``), ``LRFreeTrainer.save_model()``
exports the averaged weights; a plain ``Trainer`` saves the training weights unless you
call ``optimizer.eval()`` first.
"""
from __future__ import annotations

from typing import Any

import torch

from lrfree.integrations._common import LossFeed, learning_rate_scalars, missing

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:
    raise missing("huggingface", "transformers and accelerate") from exc


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _keeps_average(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an lrfree optimizer whose ``eval()`` swaps in an average."""
    groups = getattr(optimizer, "param_groups", None)
    return bool(groups) and hasattr(optimizer, "eval") and \
        (groups[0].get("schedule_free") is True or bool(groups[0].get("average")))


class LRFreeTrainer(Trainer):
    """``Trainer`` that hands each optimizer step the loss it back-propagated and logs the
    estimated learning rate.

    The loss goes only to optimizers that need it (``optimizer.needs_loss``: ``PSSPS``,
    ``SPS``, and ``PSDASGD`` with ``warmup="polyak"``), through a torch step pre-hook; any other optimizer is stepped exactly as by
    ``Trainer``. A step skipped by a gradient scaler (fp16 overflow) drops its loss with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loss_feed = LossFeed()
        self._fed: Any = None
        self._hook: Any = None
        self._step_complete = True
        super().__init__(*args, **kwargs)
        if self.optimizer is not None:
            self._feed(self.optimizer)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.create_optimizer`` (``optimizer_cls_and_kwargs`` builds an lrfree
        optimizer there), with the loss hook attached."""
        optimizer = super().create_optimizer(*args, **kwargs)
        self._feed(optimizer)
        return optimizer

    def _feed(self, optimizer: Any) -> None:
        optimizer = _unwrap(optimizer)
        if optimizer is self._fed or not getattr(optimizer, "needs_loss", False):
            return
        if self._hook is not None:
            self._hook.remove()
        self._hook = self._loss_feed.attach(optimizer)
        self._fed = optimizer

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """``Trainer.training_step``; its return value is the loss it back-propagated."""
        if self._step_complete:
            self._loss_feed.reset()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._loss_feed.add(loss)
        # the micro-batch whose gradient is synchronised is the last before the step
        self._step_complete = self.accelerator.sync_gradients
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; a save you ask for exports the averaged weights of an
        optimizer that keeps them (``PSDASGD(schedule_free=True)`` or ``average=True``):
        ``optimizer.eval()`` before, ``optimizer.train()`` after (unless you had called
        ``eval()`` yourself). Trainer's own checkpoints (``_internal_call=True``) keep the
        training weights, which the saved optimizer state continues from on resume."""
        opt = _unwrap(self.optimizer) if self.optimizer is not None else None
        swap = not _internal_call and opt is not None and _keeps_average(opt) \
            and not opt.param_groups[0].get("averaged_in")
        if swap:
            opt.eval()
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            if swap:
                opt.train()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """``Trainer.log``, with the estimate added to the training logs."""
        if "loss" in logs and self.optimizer is not None:
            logs.update(learning_rate_scalars(_unwrap(self.optimizer)))
        super().log(logs, *args, **kwargs)


class EstimatedLRCallback(TrainerCallback):
    """Adds the estimate (``effective_lr``, ``d`` or ``polyak_step``, ...) to the training
    logs of a plain ``Trainer``: to ``state.log_history`` and to what the callbacks after
    this one see (the console printer). The ``report_to`` integrations run before user
    callbacks and miss it; :class:`LRFreeTrainer` logs it for them too."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               optimizer: Any = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or optimizer is None:
            return
        scalars = learning_rate_scalars(_unwrap(optimizer))
        logs.update(scalars)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(scalars)
