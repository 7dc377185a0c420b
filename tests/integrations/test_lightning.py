"""Lightning steps lrfree optimizers exactly as a hand-written loop over the same batches."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrfree

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers.logger import Logger

from lrfree.integrations.lightning import AccumulatedLoss, EstimatedLRMonitor


def data(n: int = 32) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen)
    return torch.utils.data.TensorDataset(x, (x[:, :3] * 2).argmax(1))


class Module(L.LightningModule):
    def __init__(self, optimizer: type[torch.optim.Optimizer]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.optimizer = optimizer
        self.opt: torch.optim.Optimizer | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        self.opt = self.optimizer(self.parameters())
        return self.opt


class Memory(Logger):
    """Keeps what Lightning logs, by step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    name, version = "memory", 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def fit(module, steps, accumulation=1, precision="32-true", callbacks=(), logger=False):
    received: list[torch.Tensor] = []
    estimates: list[float] = []

    class Spy(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]

            def wrap(o, args, kwargs):  # runs after AccumulatedLoss's hook (registered later)
                closure = kwargs["closure"]

                def recorded():
                    out = closure()
                    received.append(out)
                    return out
                return (args[0],), {**kwargs, "closure": recorded}
            opt.register_step_pre_hook(wrap)
            opt.register_step_post_hook(
                lambda o, a, kw: estimates.append(float(o.param_groups[0]["effective_lr"])))

    trainer = L.Trainer(
        max_steps=steps, accumulate_grad_batches=accumulation, precision=precision,
        accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, Spy()])
    loader = torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False)
    trainer.fit(module, loader)
    return trainer, received, estimates


def hand_loop(module, opt, steps, accumulation=1, autocast=None, scaler=None):
    """Textbook accumulation; PSSPS gets the loss of the accumulated batch."""
    batches = list(torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False))
    context = (lambda: torch.autocast("cpu", dtype=autocast)) if autocast \
        else contextlib.nullcontext
    losses = []
    for step in range(steps):
        opt.zero_grad()
        total = None
        for x, y in batches[step * accumulation:(step + 1) * accumulation]:
            with context():
                loss = F.cross_entropy(module.net(x), y) / accumulation
            (scaler.scale(loss) if scaler else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if scaler:
            scaler.step(opt, loss=total)  # the unscaled loss, as lrfree documents
            scaler.update()
        else:
            opt.step(loss=total)
        losses.append(total)
    return losses


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_pssps_with_the_closure_equals_hand_loop():
    module = Module(lrfree.PSSPS)
    twin = copy.deepcopy(module)
    _, received, _ = fit(module, steps=4)
    hand = hand_loop(twin, lrfree.PSSPS(twin.parameters()), steps=4)
    assert all(torch.equal(r, h) for r, h in zip(received, hand)) and len(received) == 4
    assert_same_parameters(module, twin)


def test_accumulation_needs_accumulated_loss():
    steps, n = 3, 2
    module = Module(lrfree.PSSPS)
    twin, bare, initial = copy.deepcopy(module), copy.deepcopy(module), copy.deepcopy(module)
    _, received, _ = fit(module, steps, n, callbacks=[AccumulatedLoss()])
    hand = hand_loop(twin, lrfree.PSSPS(twin.parameters()), steps, n)
    assert all(torch.equal(r, h) for r, h in zip(received, hand)) and len(received) == steps
    assert_same_parameters(module, twin)

    # without the callback Lightning's closure returns the last micro-batch's share only
    _, bare_received, _ = fit(bare, steps, n)
    batches = list(torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False))
    x, y = batches[n - 1]
    with torch.no_grad():
        last_share = F.cross_entropy(initial.net(x), y) / n
    assert torch.equal(bare_received[0], last_share)
    assert not torch.equal(bare_received[0], hand[0])


def test_bf16_mixed_equals_hand_loop_under_autocast():
    steps, n = 2, 2
    module = Module(lrfree.PSSPS)
    twin, full = copy.deepcopy(module), copy.deepcopy(module)
    _, received, _ = fit(module, steps, n, precision="bf16-mixed", callbacks=[AccumulatedLoss()])
    hand = hand_loop(twin, lrfree.PSSPS(twin.parameters()), steps, n, autocast=torch.bfloat16)
    assert all(torch.equal(r, h) for r, h in zip(received, hand)) and len(received) == steps
    assert_same_parameters(module, twin)
    # and the forward did run in bf16: float32 gives other losses
    assert not torch.equal(hand_loop(full, lrfree.PSSPS(full.parameters()), 1, n)[0], hand[0])


def test_fp16_grad_scaler_gets_the_unscaled_accumulated_loss():
    """Lightning's fp16 path runs the closure itself and steps through the GradScaler with
    no loss; fp16 AMP is not offered on CPU by name, so the plugin is built by hand."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    steps, n = 2, 2
    module = Module(lrfree.PSSPS)
    twin = copy.deepcopy(module)
    received: list[torch.Tensor] = []
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))

    class Spy(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_pre_hook(
                lambda o, a, kw: received.append(kw.get("loss")))

    trainer = L.Trainer(
        max_steps=steps, accumulate_grad_batches=n, plugins=[plugin], accelerator="cpu",
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[AccumulatedLoss(), Spy()])
    trainer.fit(module, torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False))
    hand = hand_loop(twin, lrfree.PSSPS(twin.parameters()), steps, n, autocast=torch.float16,
                     scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert all(torch.equal(r, h) for r, h in zip(received, hand)) and len(received) == steps
    assert_same_parameters(module, twin)


def test_monitor_logs_the_estimate_of_every_step():
    logger = Memory()
    module = Module(lrfree.PSDASGD)
    _, _, estimates = fit(module, steps=3, callbacks=[EstimatedLRMonitor()], logger=logger)
    logged = [m["lrfree/effective_lr"] for _, m in logger.rows if "lrfree/effective_lr" in m]
    assert logged == estimates and len(logged) == 3
    last_d = [m["lrfree/d"] for _, m in logger.rows if "lrfree/d" in m][-1]
    assert last_d == float(module.opt.param_groups[0]["d"])


def test_evaluate_at_average_validates_at_x_and_trains_at_y():
    """EvaluateAtAverage with PSDASGD(schedule_free=True): training equals the hand loop
    (at y), validation sees the average x, and fit ends with x in the model."""
    from lrfree.integrations.lightning import EvaluateAtAverage

    seen: list[torch.Tensor] = []

    class Validated(Module):
        def validation_step(self, batch, batch_idx):
            seen.append(torch.cat([p.detach().reshape(-1) for p in self.parameters()]))

    make = lambda params: lrfree.PSDASGD(params, schedule_free=True)  # noqa: E731
    module = Validated(make)
    twin = copy.deepcopy(module)
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", devices=1, logger=False, val_check_interval=3,
        num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[EvaluateAtAverage()])
    loader = torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False)
    trainer.fit(module, loader, val_dataloaders=torch.utils.data.DataLoader(data(8), batch_size=8))
    twin_opt = make(twin.parameters())
    batches = list(torch.utils.data.DataLoader(data(), batch_size=4, shuffle=False))
    averages, gaps = [], []
    for done in (0, 3):  # validation after steps 3 and 6
        for x, y in batches[done:done + 3]:
            twin_opt.zero_grad()
            F.cross_entropy(twin.net(x), y).backward()
            twin_opt.step()
        y_point = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
        twin_opt.eval()
        averages.append(torch.cat([p.detach().reshape(-1) for p in twin.parameters()]))
        gaps.append(float((averages[-1] - y_point).abs().max()))
        twin_opt.train()
    assert min(gaps) > 1e-5, "x and y must differ for the test to be able to fail"
    assert len(seen) == 2
    for got, want in zip(seen, averages):
        assert torch.allclose(got, want, rtol=0, atol=1e-7)
    twin_opt.eval()
    assert_same_parameters_close(module, twin)


def assert_same_parameters_close(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-7)


class Scheduled(Module):
    def configure_optimizers(self):
        self.opt = self.optimizer(self.parameters())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=10)
        return {"optimizer": self.opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_default_psdasgd_follows_the_scheduler_lightning_is_given():
    """PSDASGD's default schedule_free="auto" under Lightning: schedule-free when
    configure_optimizers returns no scheduler, the momentum step when it returns one (the
    scheduler exists before the first step), as docs/integrations.md says."""
    plain, scheduled = Module(lrfree.PSDASGD), Scheduled(lrfree.PSDASGD)
    fit(plain, 3)
    fit(scheduled, 3)
    assert plain.opt.param_groups[0]["schedule_free"] is True
    assert scheduled.opt.param_groups[0]["schedule_free"] is False
