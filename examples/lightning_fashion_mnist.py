"""Train a small CNN on Fashion-MNIST with PyTorch Lightning and an lrfree optimizer.

    python examples/lightning_fashion_mnist.py --optimizer ps-sps --accumulate 2

Reads Fashion-MNIST through lrfree's loader (the Debian package dataset-fashion-mnist, or
$LRFREE_DATA_DIR; nothing is downloaded when either is there). ``AccumulatedLoss`` hands
PS-SPS the loss of the whole accumulated batch, ``EstimatedLRMonitor`` logs the estimate
(to a CSV file here; any Lightning logger works). Prints the test accuracy.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import lrfree
from lrfree.bench.data.fashion_mnist import load_fashion_mnist
from lrfree.integrations.lightning import AccumulatedLoss, EstimatedLRMonitor

try:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
except ImportError as exc:
    raise SystemExit("this example needs: pip install 'lrfree[integrations]'") from exc


class Classifier(L.LightningModule):
    def __init__(self, optimizer: str, steps: int) -> None:
        super().__init__()
        self.optimizer_name, self.steps = optimizer, steps
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = lrfree.create(self.optimizer_name, self.parameters())
        # lr is a multiplier on the estimate: a cosine schedule decays the estimated step
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", default="ps-sps", choices=lrfree.available())
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--precision", default="32-true", help='e.g. "bf16-mixed"')
    parser.add_argument("--logdir", default=None, help="CSV logs (default: a temporary folder)")
    parser.add_argument("--log-every", type=int, default=10, help="log every n steps")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    train = torch.utils.data.TensorDataset(*load_fashion_mnist("train", subset=args.train_size))
    test = torch.utils.data.TensorDataset(*load_fashion_mnist("test", subset=args.test_size))
    model = Classifier(args.optimizer, args.steps)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = L.Trainer(
            max_steps=args.steps, accumulate_grad_batches=args.accumulate,
            precision=args.precision, accelerator="cpu", devices=1,
            logger=CSVLogger(args.logdir or scratch, name="lightning_fashion_mnist"),
            log_every_n_steps=args.log_every, callbacks=[AccumulatedLoss(), EstimatedLRMonitor()],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, torch.utils.data.DataLoader(train, batch_size=args.batch,
                                                       shuffle=True))
        [result] = trainer.test(model, torch.utils.data.DataLoader(test, batch_size=500),
                                verbose=False)
    estimate = float(trainer.optimizers[0].param_groups[0]["effective_lr"])
    print(f"{args.optimizer}: test accuracy {result['test/acc']:.4f} after {args.steps} steps; "
          f"last effective lr {estimate:.3g}")
    return {"test_acc": result["test/acc"], "effective_lr": estimate,
            "global_step": trainer.global_step}


if __name__ == "__main__":
    main()
