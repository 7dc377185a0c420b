"""Log the estimated learning rate of an lrfree optimizer to TensorBoard.

    python examples/tensorboard_logging.py --logdir runs/lrfree --optimizer ps-sps
    tensorboard --logdir runs/lrfree

A small MLP learns a fixed random teacher (synthetic data: nothing to download). Each step
writes the training loss and, through ``log_learning_rates``, ``lrfree/effective_lr`` (the
lr torch.optim.Adam would need for that step) and the estimate the optimizer keeps
(``lrfree/d`` for PS-DA-SGD, ``lrfree/polyak_step`` for PS-SPS, ...). A cosine schedule
multiplies the estimate, as the README recommends.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import lrfree
from lrfree.integrations.tensorboard import log_learning_rates, summary_writer


def batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, 32, generator=torch.Generator().manual_seed(step))
    teacher = torch.randn(32, 10, generator=torch.Generator().manual_seed(-1))
    return x, (x @ teacher).argmax(1)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", default="runs/lrfree")
    parser.add_argument("--optimizer", default="ps-dadapt", choices=lrfree.available())
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = lrfree.create(args.optimizer, model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    history: dict[str, list[float]] = {}
    with summary_writer(args.logdir) as writer:
        for step in range(args.steps):
            x, y = batch(step, args.batch)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step(loss=loss)
            sched.step()
            writer.add_scalar("train/loss", loss.item(), step)
            for tag, value in log_learning_rates(writer, opt, step).items():
                history.setdefault(tag, []).append(value)
    print(f"{args.optimizer}: final loss {loss.item():.4f}, "
          f"last effective lr {history['effective_lr'][-1]:.3g}; events in {args.logdir}")
    return history


if __name__ == "__main__":
    main()
