"""Glue between lrfree optimizers and training frameworks; nothing here is imported by
``import lrfree``, so the library itself still depends on torch only.

- :mod:`lrfree.integrations.tensorboard`: ``log_learning_rates(writer, optimizer, step)``.
- :mod:`lrfree.integrations.huggingface`: ``LRFreeTrainer`` (hands the training loss to
  the Polyak methods, logs the estimate) and ``EstimatedLRCallback`` for a plain ``Trainer``.
- :mod:`lrfree.integrations.lightning`: ``AccumulatedLoss`` (the loss of the whole
  accumulated batch for the Polyak methods) and ``EstimatedLRMonitor``.

Each module imports its framework when it is imported; ``pip install 'lrfree[integrations]'``
installs the versions we test. See docs/integrations.md.
"""
