"""Trainer drives lrfree optimizers exactly as a hand-written loop over the same batches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrfree

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments

from lrfree.integrations.huggingface import EstimatedLRCallback, LRFreeTrainer


class TinyClassifier(nn.Module):
    """Trainer's model contract: keyword inputs in, a dict holding the loss out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 48) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=gen)
        self.y = (self.x[:, :3] * 2).argmax(1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def recording(base: type[Trainer]) -> type[Trainer]:
    """``base`` that keeps every micro-batch it trained on and the loss it computed."""

    class Recording(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.seen.append(({k: v.clone() for k, v in inputs.items()},
                              (out[0] if return_outputs else out).detach().clone()))
            return out

    Recording.seen = None
    return Recording


def args(tmp_path, steps: int, accumulation: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, max_grad_norm=0.0, seed=0, use_cpu=True,
        dataloader_num_workers=0)


def train(trainer_cls, model, opt, sched, tmp_path, steps, accumulation, callbacks=()):
    cls = recording(trainer_cls)
    trainer = cls(model=model, args=args(tmp_path, steps, accumulation), train_dataset=Points(),
                  optimizers=(opt, sched), callbacks=list(callbacks))
    trainer.seen = []
    received: list[torch.Tensor | None] = []
    estimates: list[float] = []
    # registered after LRFreeTrainer's hook, so it sees what that hook handed over
    opt.register_step_pre_hook(lambda o, a, kw: received.append(kw.get("loss")))
    opt.register_step_post_hook(
        lambda o, a, kw: estimates.append(float(o.param_groups[0]["effective_lr"])))
    trainer.train()
    return trainer, received, estimates


def hand_loop(model, opt, sched, seen, accumulation, pass_loss):
    """The same micro-batches, in the same order, through the textbook accumulation loop."""
    losses = []
    for start in range(0, len(seen), accumulation):
        opt.zero_grad()
        total = None
        for inputs, _ in seen[start:start + accumulation]:
            loss = model(**inputs)["loss"] / accumulation
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        losses.append(total)
        opt.step(loss=total) if pass_loss else opt.step()
        sched.step()
    return losses


def assert_hand_loop_agrees(model, twin, twin_opt, trainer, received, steps, accumulation):
    """The hand loop over Trainer's micro-batches, passing the loss, gives ``twin_opt`` the
    losses the hook handed over and leaves ``twin`` bit-identical to ``model``."""
    hand = hand_loop(twin, twin_opt, linear_decay(twin_opt, steps), trainer.seen, accumulation,
                     pass_loss=True)
    assert len(hand) == len(received)
    for got, want in zip(received, hand):
        assert torch.equal(got, want)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def linear_decay(opt, steps):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (steps + 1))


def test_psdasgd_in_plain_trainer_equals_hand_loop_and_logs_estimate(tmp_path):
    steps = 5
    model = TinyClassifier()
    twin = copy.deepcopy(model)
    opt = lrfree.PSDASGD(model.parameters())
    trainer, _, estimates = train(Trainer, model, opt, linear_decay(opt, steps), tmp_path,
                                  steps, 1, callbacks=[EstimatedLRCallback()])
    twin_opt = lrfree.PSDASGD(twin.parameters())
    hand_loop(twin, twin_opt, linear_decay(twin_opt, steps), trainer.seen, 1, pass_loss=False)

    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert trainer.state.global_step == steps
    assert all(int(s["step"]) == steps for s in opt.state.values())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, steps + 1))
    assert [h["effective_lr"] for h in logged] == estimates
    assert [h["d"] for h in logged][-1] == float(opt.param_groups[0]["d"])
    # Trainer's own "learning_rate" is the multiplier the schedule set, not the estimate
    assert logged[0]["learning_rate"] == pytest.approx(1.0)


def test_pssps_receives_the_loss_trainer_backpropagated(tmp_path):
    steps, accumulation = 4, 2
    model = TinyClassifier()
    twin = copy.deepcopy(model)
    opt = lrfree.PSSPS(model.parameters())
    trainer, received, estimates = train(LRFreeTrainer, model, opt, linear_decay(opt, steps),
                                         tmp_path, steps, accumulation)
    assert len(trainer.seen) == steps * accumulation
    expected = [trainer.seen[i][1] / accumulation + trainer.seen[i + 1][1] / accumulation
                for i in range(0, len(trainer.seen), accumulation)]
    assert len(received) == steps
    for got, want in zip(received, expected):
        assert torch.equal(got, want)

    assert_hand_loop_agrees(model, twin, lrfree.PSSPS(twin.parameters()), trainer, received,
                            steps, accumulation)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["effective_lr"] for h in logged] == estimates
    assert logged[-1]["polyak_step"] == float(opt.param_groups[0]["polyak_step"])


def test_psdasgd_polyak_warmup_receives_the_loss_too(tmp_path):
    """PSDASGD(warmup="polyak") reads the loss (needs_loss): LRFreeTrainer hands it the
    accumulated loss as it does PSSPS, and training equals the hand loop that passes it."""
    steps, accumulation = 4, 2
    model = TinyClassifier()
    twin = copy.deepcopy(model)
    make = lambda params: lrfree.PSDASGD(params, warmup="polyak", warmup_growth=3.0)  # noqa: E731
    opt = make(model.parameters())
    trainer, received, _ = train(LRFreeTrainer, model, opt, linear_decay(opt, steps),
                                 tmp_path, steps, accumulation)
    assert len(received) == steps and all(r is not None for r in received)
    assert_hand_loop_agrees(model, twin, make(twin.parameters()), trainer, received, steps,
                            accumulation)


def test_plain_trainer_cannot_step_pssps(tmp_path):
    model = TinyClassifier()
    opt = lrfree.PSSPS(model.parameters())
    trainer = Trainer(model=model, args=args(tmp_path, 1, 1), train_dataset=Points(),
                      optimizers=(opt, None))
    with pytest.raises(ValueError, match="needs the mini-batch loss"):
        trainer.train()


def test_optimizer_cls_and_kwargs_gets_the_loss_too(tmp_path):
    model = TinyClassifier()
    trainer = LRFreeTrainer(model=model, args=args(tmp_path, 2, 1), train_dataset=Points(),
                            optimizer_cls_and_kwargs=(lrfree.PSSPS, {}))
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, lrfree.PSSPS)
    assert float(opt.param_groups[0]["polyak_step"]) > 0


def test_adamw_is_untouched_and_logs_its_lr(tmp_path):
    model = TinyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = LRFreeTrainer(model=model, args=args(tmp_path, 2, 1), train_dataset=Points(),
                            optimizers=(opt, torch.optim.lr_scheduler.ConstantLR(opt, 1.0)))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["effective_lr"] for h in logged] == [1e-3, 1e-3]


def test_schedule_free_evaluates_at_the_average_and_trains_at_y(tmp_path):
    """PSDASGD(schedule_free=True) under Trainer with a constant schedule: Trainer calls
    optimizer.train() at each training step and optimizer.eval() before evaluating, so
    training equals the hand loop and trainer.evaluate() sees the average x, then the
    training point y is back for the next step (docs/integrations.md)."""
    steps = 5
    model = TinyClassifier()
    twin = copy.deepcopy(model)
    opt = lrfree.PSDASGD(model.parameters(), schedule_free=True)
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer, _, _ = train(Trainer, model, opt, constant, tmp_path, steps, 1)
    twin_opt = lrfree.PSDASGD(twin.parameters(), schedule_free=True)
    hand_loop(twin, twin_opt, torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1.0),
              trainer.seen, 1, pass_loss=False)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    seen_at_eval: list[torch.Tensor] = []
    trainer.eval_dataset = Points(8)
    original = model.forward

    def forward(x, labels):
        seen_at_eval.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        return original(x, labels)

    model.forward = forward
    trainer.evaluate()
    model.forward = original
    twin_opt.eval()
    average = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
    twin_opt.train()
    y = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
    assert float((average - y).abs().max()) > 1e-5, "x and y must differ to be a test"
    assert seen_at_eval and all(torch.allclose(s, average, rtol=0, atol=1e-7)
                                for s in seen_at_eval)
    trainer.optimizer.train()  # what Trainer does before its next training step
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-7)


def test_lrfree_trainer_exports_the_average_and_checkpoints_the_training_point(tmp_path):
    """LRFreeTrainer.save_model() with PSDASGD(schedule_free=True) writes the average x
    (what opt.eval() gives the hand loop), puts y back for training, and leaves the
    optimizer in eval mode if the user had put it there; Trainer's own checkpoint saves
    (_internal_call=True) write y, which the optimizer state resumes from."""
    from safetensors.torch import load_file

    model = TinyClassifier()
    twin = copy.deepcopy(model)
    opt = lrfree.PSDASGD(model.parameters(), schedule_free=True)
    trainer, _, _ = train(LRFreeTrainer, model, opt,
                          torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), tmp_path, 5, 1)
    twin_opt = lrfree.PSDASGD(twin.parameters(), schedule_free=True)
    hand_loop(twin, twin_opt, torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1.0),
              trainer.seen, 1, pass_loss=False)
    y = {k: v.clone() for k, v in twin.state_dict().items()}
    twin_opt.eval()
    x = {k: v.clone() for k, v in twin.state_dict().items()}
    assert max(float((x[k] - y[k]).abs().max()) for k in x) > 1e-5, "x = y: not a test"

    def close(saved, want):
        return all(torch.allclose(saved[k], want[k], rtol=0, atol=1e-7) for k in want)

    trainer.save_model(str(tmp_path / "export"))
    assert close(load_file(str(tmp_path / "export" / "model.safetensors")), x)
    assert not opt.param_groups[0].get("averaged_in")
    assert close(model.state_dict(), y)  # training goes on from y
    trainer.save_model(str(tmp_path / "checkpoint"), _internal_call=True)
    assert close(load_file(str(tmp_path / "checkpoint" / "model.safetensors")), y)
    opt.eval()  # the user's own eval() is kept
    trainer.save_model(str(tmp_path / "again"))
    assert close(load_file(str(tmp_path / "again" / "model.safetensors")), x)
    assert opt.param_groups[0].get("averaged_in")
    opt.train()


def test_default_psdasgd_under_trainer_takes_the_momentum_step(tmp_path):
    """Trainer attaches its own scheduler (linear decay by default) before the first step,
    so PSDASGD's default schedule_free="auto" settles on the momentum step there, as the
    docs say (docs/integrations.md): no schedule-free iteration under a decaying schedule."""
    model = TinyClassifier()
    opt = lrfree.PSDASGD(model.parameters())
    assert opt.param_groups[0]["schedule_free"] == "auto"
    train(Trainer, model, opt, None, tmp_path, 3, 1)
    assert opt.param_groups[0]["schedule_free"] is False
    assert "m" in opt.state[next(model.parameters())]
