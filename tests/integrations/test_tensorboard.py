"""The TensorBoard event file holds exactly the estimates the optimizer had at each step."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

import lrfree
from lrfree.integrations.tensorboard import log_learning_rates

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "tensorboard_logging.py"


def read_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def load_example():
    spec = importlib.util.spec_from_file_location("tensorboard_logging", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,estimate", [("ps-dadapt", "d"), ("ps-sps", "polyak_step")])
def test_example_event_file_holds_each_steps_estimate(tmp_path, name, estimate):
    steps = 6
    history = load_example().main(["--logdir", str(tmp_path), "--optimizer", name,
                                   "--steps", str(steps), "--batch", "16"])
    scalars = read_scalars(tmp_path)
    for tag in ("effective_lr", estimate):
        written = scalars[f"lrfree/{tag}"]
        assert [s for s, _ in written] == list(range(steps))
        # event files store float32
        assert [v for _, v in written] == [float(np.float32(v)) for v in history[tag]]
    assert len(set(history["effective_lr"])) == steps  # the estimate moved every step
    assert "train/loss" in scalars


def test_written_values_are_the_optimizers_after_each_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    head = torch.nn.Linear(2, 1)
    opt = lrfree.PSDASGD([{"params": model.parameters()},
                          {"params": head.parameters(), "lr": 0.5}])
    expected = []
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            loss = head(model(torch.randn(8, 4))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            expected.append([float(g["effective_lr"]) for g in opt.param_groups])
            log_learning_rates(writer, opt, step, prefix="opt/")
    scalars = read_scalars(tmp_path)
    for i in range(2):
        got = [v for _, v in scalars[f"opt/effective_lr/group{i}"]]
        assert got == [float(np.float32(e[i])) for e in expected]
    assert expected[-1][1] == pytest.approx(0.5 * expected[-1][0])
    assert "opt/d" in scalars and "opt/d_hat" in scalars
