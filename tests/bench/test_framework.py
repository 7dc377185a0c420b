"""The benchmark framework: registry, handles, runner, report and CLI on the convex task."""
from __future__ import annotations

import argparse
import inspect
import json
import math

import numpy as np
import pytest
import torch

from lrfree.bench import optimizers as bench_opt
from lrfree.bench.cli import main, parse_seeds
from lrfree.bench.report import build_report, group, load_records, lr_free_ranks
from lrfree.bench.runner import RunKey, run_one, run_suite
from lrfree.bench.tasks import TASKS, get_task
from lrfree.bench.tasks.convex import L2, LogRegTask, _problem, objective

SUITE = ["adam@1e-3", "adam@1e-2", "sgdm@1e6", "prodigy"]


def _ours_missing(name: str) -> str | None:
    """Why one of our optimizers cannot be built yet (the lead writes them concurrently)."""
    import lrfree

    spec = bench_opt.get_spec(name)
    if spec.family != "ours":
        return None
    class_name = {"psdasgd": "PSDASGD", "psdasgd-avg": "PSDASGD", "psdasgd-sf": "PSDASGD",
                  "pssps": "PSSPS",
                  "sps": "SPS", "dadaptsgd": "DAdaptSGD", "psdog": "PSDoG"}[name]
    cls = getattr(lrfree, class_name, None)
    if cls is None:
        return f"lrfree.{class_name} does not exist yet"
    if name.endswith("-avg") and "average" not in inspect.signature(cls).parameters:
        return f"lrfree.{class_name} has no `average` option yet"
    return None


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    keys = [RunKey("logreg", name, seed, "tiny") for name in SUITE for seed in (0, 1)]
    run_suite(keys, out, command="pytest", progress=False)
    return out


def test_task_registry_is_lazy_and_complete() -> None:
    assert set(TASKS) == {"logreg", "resnet20", "vgg", "vit", "segmentation", "simclr",
                          "sac-hopper", "minilm-wordnet", "effnet-fashion"}
    assert all(":" in info.target for info in TASKS.values())
    assert isinstance(get_task("logreg"), LogRegTask)
    with pytest.raises(KeyError):
        get_task("nope")


def test_logreg_optimum_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    problem = _problem()
    x, y = problem.features.numpy(), problem.labels.numpy()
    # sklearn minimises C·Σ CE + ½‖W‖² with an unpenalised intercept: the same problem for C = 1/(λn).
    # Gradient 1e-8 with strong convexity 1e-3 bounds f − f* by ~1e-13. One thread: OpenMP
    # spin-waits make sklearn 40x slower on a loaded 2-core machine.
    with threadpool_limits(1):
        clf = LogisticRegression(C=1.0 / (L2 * len(y)), tol=1e-8, max_iter=5000).fit(x, y)
    value = objective(torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_),
                      problem.features, problem.labels)
    assert problem.f_star <= float(value) + 1e-12
    assert float(value) - problem.f_star < 1e-9


def test_runner_records_and_resumes(suite_dir, monkeypatch) -> None:
    path = RunKey("logreg", "adam@1e-2", 0, "tiny").path(suite_dir)
    record = json.loads(path.read_text())
    assert record["diverged"] is False and record["command"] == "pytest"
    assert record["final_metric"] == pytest.approx(record["curves"]["eval_metric"][-1])
    assert record["curves"]["steps"] and record["versions"]["torch"] == torch.__version__
    assert {"dadaptation", "prodigyopt", "schedulefree", "dog-optimizer", "momsps"} <= set(
        record["versions"])
    calls = []
    monkeypatch.setattr("lrfree.bench.runner.run_one", lambda *a: calls.append(a))
    run_suite([RunKey("logreg", "adam@1e-2", 0, "tiny")], suite_dir, progress=False)
    assert calls == []


def test_same_seed_same_start_whatever_the_optimizer(suite_dir) -> None:
    starts = {(r["optimizer"], r["seed"]): r["curves"]["eval_metric"][0]
              for r in load_records(suite_dir)}
    assert starts[("adam@1e-3", 0)] == starts[("prodigy", 0)] == starts[("sgdm@1e6", 0)]
    assert starts[("adam@1e-3", 0)] != starts[("adam@1e-3", 1)]


def test_divergence_is_recorded(suite_dir) -> None:
    record = json.loads(RunKey("logreg", "sgdm@1e6", 0, "tiny").path(suite_dir).read_text())
    assert record["diverged"] is True and record["final_metric"] is None
    assert record["diverged_reason"]


def test_report_table_and_plot(suite_dir) -> None:
    report = build_report(suite_dir)
    assert report.path.read_text() == report.markdown
    rows = {line.split("|")[1].strip(): line for line in report.markdown.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert "| 2/2 |" in rows["sgdm@1e6"] and "diverged" in rows["sgdm@1e6"]
    task = group(load_records(suite_dir))["logreg"]
    best = task.best_of("adam")
    assert best is not None and best.label == min(
        ("adam@1e-3", "adam@1e-2"), key=lambda n: task.rows[n].mean())
    assert f"| {best.label} | adam | 2 |" in rows[best.label] and "| 1 |" in rows[best.label]
    assert "prodigy" in rows and "- Adam sweep (2 lrs): best" in report.markdown
    assert len(report.plots) == 1 and report.plots[0].read_bytes()[:4] == b"\x89PNG"


def test_cli_tiny_end_to_end(tmp_path, capsys) -> None:
    ours = "psdasgd" if _ours_missing("psdasgd") is None else "dog"
    args = ["--budget", "tiny", "--tasks", "logreg", "--optimizers", f"{ours},adam@1e-2,sf-adamw",
            "--seeds", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"| {ours} |" in printed and "| sf-adamw | peer |" in printed
    assert f"plot: {tmp_path / 'plots' / 'logreg.png'}" in printed
    assert len(list(tmp_path.glob("logreg/*.json"))) == 3
    assert main(["--report-only", "--out", str(tmp_path), "--no-plots"]) == 0
    assert "| adam@1e-2 |" in capsys.readouterr().out


def test_failed_run_is_reported_not_recorded(tmp_path, monkeypatch) -> None:
    def broken(name: str):
        raise ImportError("optional dependency missing")

    monkeypatch.setattr("lrfree.bench.runner.get_task", broken)
    key = RunKey("logreg", "adam@1e-2", 0, "tiny")
    result = run_suite([key], tmp_path, progress=False)
    assert "ImportError" in result.failures[key] and not key.path(tmp_path).exists()


def test_parse_seeds() -> None:
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="count"):
        parse_seeds("0")


def test_averaging_handle_matches_formula() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    handle = bench_opt.make_factory("adam-avg@1e-1")(model.parameters(), 40)
    iterates = []
    for _ in range(40):
        loss = model(torch.randn(8, 3)).pow(2).mean()
        handle.zero_grad()
        loss.backward()
        handle.step(loss.detach())
        iterates.append([p.detach().double().clone() for p in model.parameters()])
    weights = np.arange(1, 41, dtype=np.float64) ** bench_opt.AVERAGE_POWER
    expected = [sum(w * it[i] for w, it in zip(weights, iterates)) / weights.sum()
                for i in range(2)]
    handle.eval()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    handle.train()
    for p, last in zip(model.parameters(), iterates[-1]):
        assert torch.equal(p.detach().double(), last)


def test_average_ratio_does_not_overflow() -> None:
    avg = bench_opt.IterateAverage([torch.zeros(1)])
    for _ in range(100_000):
        avg.k += 1
        avg.ratio = 1.0 + avg.ratio * ((avg.k - 1) / avg.k) ** avg.power
    # W_k / w_k → k/(p+1) for large k.
    assert avg.ratio == pytest.approx(100_000 / 9, rel=1e-3)


@pytest.mark.parametrize("name", bench_opt.optimizer_names())
def test_every_registered_optimizer_steps(name: str) -> None:
    reason = _ours_missing(name)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    start = [p.detach().clone() for p in model.parameters()]
    handle = bench_opt.make_factory(name)(model.parameters(), 10)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(3):
        handle.train()
        loss = (model(x) - y).pow(2).mean()
        handle.zero_grad()
        loss.backward()
        handle.step(loss.detach())
        assert isinstance(handle.effective_lr(), float)
        handle.eval()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start))
    spec = bench_opt.get_spec(name)
    if spec.family in ("adam", "sgd"):
        assert handle.effective_lr() == pytest.approx(spec.lr * 0.5 * (1 + math.cos(0.3 * math.pi)))


def test_sf_adamw_at_a_set_lr_is_an_unscheduled_ablation() -> None:
    """`sf-adamw@<lr>`: schedule-free AdamW at that lr, never scheduled, not ranked."""
    spec = bench_opt.get_spec("sf-adamw@1e-2")
    assert (spec.family, spec.lr, spec.scheduled, spec.train_eval) == \
        ("ablation", 1e-2, False, True)
    model = torch.nn.Linear(2, 1)
    handle = bench_opt.make_factory("sf-adamw@1e-2")(model.parameters(), 4)
    for _ in range(4):
        model(torch.ones(1, 2)).sum().backward()
        handle.step(torch.tensor(0.0))
    assert handle.effective_lr() == 1e-2


def test_schedule_none_keeps_the_lr() -> None:
    model = torch.nn.Linear(2, 1)
    handle = bench_opt.make_factory("adam@1e-2", schedule="none")(model.parameters(), 4)
    for _ in range(4):
        model(torch.ones(1, 2)).sum().backward()
        handle.step(torch.tensor(0.0))
    assert handle.effective_lr() == 1e-2


def test_run_one_rejects_unknown_optimizer() -> None:
    with pytest.raises(KeyError):
        run_one(RunKey("logreg", "adam@fast", 0, "tiny"))


def test_no_schedule_rows_are_shown_not_ranked(suite_dir) -> None:
    """The `--schedule none` ablation rows appear in the tables but not in the LR-free
    ranks, which compare every method as it is meant to be run."""
    records = load_records(suite_dir)
    ablation = [dict(r, schedule="none") for r in records if r["optimizer"] == "prodigy"]
    task = group(records + ablation)["logreg"]
    assert "prodigy (no sched)" in task.rows
    ranks = lr_free_ranks(task)
    assert "prodigy" in ranks and "prodigy (no sched)" not in ranks


def _record(optimizer: str, lr: float, seed: int, metric: float | None) -> dict:
    """A run record with just what the report reads (accuracy: higher is better)."""
    return {"task": "toy", "metric": "test_acc", "higher_is_better": True,
            "optimizer": optimizer, "optimizer_family": "adam", "lr": lr, "schedule": "cosine",
            "seed": seed, "final_metric": metric, "diverged": metric is None,
            "wall_time_s": 1.0}


def test_an_lr_that_diverged_on_one_seed_is_not_the_best_of_the_sweep() -> None:
    """The surviving seed of a half-diverged lr has the highest mean; it must still stand
    below every lr that never diverged: in the best-Adam choice (the reference of every
    ratio), the sweep summary and the table order."""
    from lrfree.bench.report import task_table

    records = [_record("adam@1e-2", 1e-2, 0, 0.9), _record("adam@1e-2", 1e-2, 1, None),
               _record("adam@1e-3", 1e-3, 0, 0.7), _record("adam@1e-3", 1e-3, 1, 0.7),
               _record("adam@1e-4", 1e-4, 0, 0.5), _record("adam@1e-4", 1e-4, 1, 0.5)]
    task = group(records)["toy"]
    assert task.best_of("adam").label == "adam@1e-3"
    table = task_table(task)
    assert "Ratio = mean / mean of best-tuned Adam (lr 0.001)." in table
    order = [line.split("|")[1].strip() for line in table.splitlines()
             if line.startswith("| adam@")]
    assert order == ["adam@1e-3", "adam@1e-4", "adam@1e-2"]
    assert ("best 0.7 (lr 0.001), median 0.5 (lr 0.0001), worst 0.9 (lr 0.01, 1/2 diverged)"
            in table)
