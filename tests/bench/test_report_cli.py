"""What a newcomer meets: --help, the grid-edge rule, Ctrl-C, the rank table, the commit
of each record, the figures' labels and legends, the device option and the user task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrfree.bench import grid
from lrfree.bench.cli import build_parser, main
from lrfree.bench.optimizers import optimizer_names
from lrfree.bench.report import (build_report, compared_methods, lr_free_ranks, mean_ranks,
                                 summary_table)
from lrfree.bench.results import group, load_records
from lrfree.bench.tasks import TASKS

HERE = Path(__file__).resolve().parent
QUADRATIC = f"{HERE / 'user_task_quadratic.py'}:make"


def _record(task: str, optimizer: str, family: str, seed: int, metric: float | None,
            lr: float | None = None, steps: int = 3) -> dict:
    """A run record with what the report and the plots read (higher is better)."""
    curve = [1.0, 0.5, 0.25][:steps]
    return {"task": task, "metric": "test_acc", "higher_is_better": True,
            "optimizer": optimizer, "optimizer_family": family, "lr": lr,
            "schedule": "cosine", "seed": seed, "final_metric": metric,
            "diverged": metric is None, "wall_time_s": 1.0, "git": "abc1234def+dirty",
            "budget": "tiny", "budget_detail": {"steps": 20}, "command": "pytest",
            "versions": {"torch": torch.__version__}, "device": "cpu",
            "machine": {"platform": "test", "cpu_count": 1, "torch_threads": 1},
            "curves": {"steps": [0, 10, 20][:steps], "train_loss": curve,
                       "effective_lr": [1e-3] * steps, "eval_steps": [0, 10, 20][:steps],
                       "eval_metric": [0.1, 0.2, metric or 0.0][:steps]}}


# --- --help -------------------------------------------------------------------------------

def test_help_lists_every_task_and_optimizer_name(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    # the wrapped lists: words separated by ", " or a line break
    words = set(text.replace(",", " ").split())
    missing = [n for n in [*TASKS, *optimizer_names()] if n not in words]
    assert not missing, missing
    assert "module:function" in text and "--device {auto,cpu,cuda}" in text


# --- the grid-edge rule ------------------------------------------------------------------

def test_next_lr_walks_the_1_3_10_grid() -> None:
    assert grid.next_lr(3e-3, 1) == pytest.approx(1e-2)
    assert grid.next_lr(1e-2, 1) == pytest.approx(3e-2)
    assert grid.next_lr(1e-4, -1) == pytest.approx(3e-5)
    assert grid.next_lr(2.4e-3, 1) == pytest.approx(3e-3)
    assert [grid.format_lr(v) for v in (3e-3, 1e-1, 1.0, 3e-5, 0.3)] == \
        ["3e-3", "1e-1", "1", "3e-5", "3e-1"]


def test_edge_and_extension_name() -> None:
    task = group([_record("t", f"adam@{lr}", "adam", 0, acc, float(lr))
                  for lr, acc in (("1e-3", 0.5), ("3e-3", 0.7))])["t"]
    assert grid.edge(task, "adam") == 1 and grid.extension(task, "adam") == "adam@1e-2"
    task = group([_record("t", f"adam@{lr}", "adam", 0, acc, float(lr))
                  for lr, acc in (("1e-3", 0.5), ("3e-3", 0.7), ("1e-2", 0.6))])["t"]
    assert grid.edge(task, "adam") == 0 and grid.extension(task, "adam") is None


def test_grid_edge_rule_extends_the_sweep_until_the_best_is_inside(tmp_path, capsys) -> None:
    """On the quadratic user task the best Adam lr is 1e-2 (see its docstring); a sweep
    started at 3e-4..3e-3 must grow to 1e-2 and then 3e-2 (to see that 1e-2 is a peak),
    and stop there."""
    args = ["--task", QUADRATIC, "--optimizers", "adam@3e-4,adam@1e-3,adam@3e-3",
            "--out", str(tmp_path), "--no-progress", "--no-plots", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr()
    task = group(load_records(tmp_path))[QUADRATIC]
    assert sorted(task.rows) == ["adam@1e-2", "adam@1e-3", "adam@3e-2", "adam@3e-3",
                                 "adam@3e-4"]
    assert task.best_of("adam").label == "adam@1e-2"
    assert {label for label, row in task.rows.items() if row.extended()} == \
        {"adam@1e-2", "adam@3e-2"}
    assert "extended by the grid-edge rule" in printed.out and "lr 0.01, 0.03" in printed.out
    assert "still at the edge" not in printed.out
    assert "grid-edge rule: " in printed.err
    # resuming runs nothing new and extends nothing further
    assert main(args) == 0
    assert len(load_records(tmp_path)) == 5
    # --no-extend leaves an edge and the report says so
    out2 = tmp_path / "no-extend"
    assert main([*args[:-6], "--out", str(out2), "--no-progress", "--no-plots",
                 "--no-extend"]) == 0
    assert "best lr is still at the edge of the grid" in capsys.readouterr().out


# --- Ctrl-C --------------------------------------------------------------------------------

def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path, monkeypatch,
                                                            capsys) -> None:
    import lrfree.bench.runner as runner

    real, calls = runner.run_one, []

    def interrupted_on_second(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_one", interrupted_on_second)
    args = ["--task", QUADRATIC, "--optimizers", "adam@1e-3,adam@1e-2", "--no-extend",
            "--out", str(tmp_path), "--no-progress", "--no-plots"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "to resume" in err
    assert f"python -m lrfree.bench --task {QUADRATIC} --optimizers" in err
    assert len(load_records(tmp_path)) == 1
    monkeypatch.setattr(runner, "run_one", real)
    assert main(args) == 0 and len(load_records(tmp_path)) == 2


# --- the rank table --------------------------------------------------------------------------

def test_ranks_compare_the_methods_every_task_ran() -> None:
    """A and B ran on both tasks, C on one: A and B are ranked among themselves on both
    tasks (C does not move their ranks), C apart, with its task count."""
    records = [_record("t1", "A", "ours", 0, 0.9), _record("t1", "B", "peer", 0, 0.5),
               _record("t1", "C", "peer", 0, 0.7),
               _record("t2", "A", "ours", 0, 0.4), _record("t2", "B", "peer", 0, 0.6)]
    tasks = group(records)
    assert compared_methods(tasks) == ["A", "B"]
    assert lr_free_ranks(tasks["t1"], ["A", "B"]) == {"A": 1.0, "B": 2.0, "C": 2.0}
    table = summary_table(tasks)
    assert "| A | 1.50 | 2 | 0 |" in table and "| B | 1.50 | 2 | 0 |" in table
    assert "| C | 2.00 | 1 of 2 | 0 |" in table
    assert "Ranked among the 2 LR-free methods that ran on all 2 tasks" in table


def test_a_method_left_out_of_the_field_gives_its_places_back() -> None:
    """A variant (A2) sits between A and B on both tasks, so it pushes the one behind it
    down a place (B on t1, A on t2); left out of the field, A and B are ranked against each
    other alone, and A2 is not ranked at all."""
    records = [_record(t, name, family, 0, acc) for t, scores in
               (("t1", (0.9, 0.8, 0.5)), ("t2", (0.3, 0.4, 0.6)))
               for (name, family), acc in zip((("A", "ours"), ("A2", "ours"), ("B", "peer")),
                                              scores)]
    tasks = group(records)
    assert {m: r[0] for m, r in mean_ranks(tasks).items()} == {"A": 2.0, "A2": 2.0, "B": 2.0}
    without = mean_ranks(tasks, frozenset({"A2"}))
    assert {m: r[0] for m, r in without.items()} == {"A": 1.5, "B": 1.5}


def test_report_shows_the_commit_of_every_record(tmp_path) -> None:
    for i, rec in enumerate([_record("t", "A", "ours", 0, 0.9),
                             dict(_record("t", "B", "peer", 0, 0.5), git="f00ba12" + "0" * 33)]):
        (tmp_path / "t").mkdir(exist_ok=True)
        (tmp_path / "t" / f"{i}.json").write_text(json.dumps(rec))
    report = build_report(tmp_path, plots=False).markdown
    rows = {line.split("|")[1].strip(): line for line in report.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["A"].rstrip().endswith("| abc1234+dirty |")
    assert rows["B"].rstrip().endswith("| f00ba12 |")
    assert "1 runs came from a tree with uncommitted changes" in report


# --- figures ---------------------------------------------------------------------------------

def _figure(seeds: int):
    from lrfree.bench.plots import task_figure

    records = [_record("t", name, family, seed, acc + 0.01 * seed, lr)
               for seed in range(seeds)
               for name, family, acc, lr in (("psdasgd", "ours", 0.8, None),
                                             ("pssps", "ours", 0.8, None),
                                             ("prodigy", "peer", 0.7, None),
                                             ("adam@1e-3", "adam", 0.75, 1e-3),
                                             ("adam@1e-2", "adam", 0.6, 1e-2))]
    return task_figure(group(records)["t"])


@pytest.mark.parametrize("seeds", [1, 2])
def test_every_panel_has_labels_a_legend_and_distinct_lines(seeds: int) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig = _figure(seeds)
    try:
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_xticklabels(), ax.get_title()
            assert ax.get_ylabel(), ax.get_title()
            legend = ax.get_legend()
            assert legend is not None and legend.get_texts(), ax.get_title()
        curves, evals, lrs, _ = fig.axes
        for ax in (curves, evals, lrs):
            lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
            assert {t.get_text() for t in ax.get_legend().get_texts()} == \
                {ln.get_label() for ln in lines}
            looks = [(ln.get_linestyle(), ln.get_marker()) for ln in lines
                     if ln.get_marker() not in (None, "None", "")]
            assert len(looks) == len(set(looks)), looks
            # the toy's curves coincide: their markers must not all sit on the same points
            assert len({tuple(ln.get_markevery()) for ln in lines
                        if ln.get_markevery() is not None}) > 1
        # a min-max band only where there is more than one seed to span
        bands = [c for c in curves.collections if isinstance(c, PolyCollection)]
        assert (len(bands) > 0) == (seeds > 1)
        assert ("min–max" in curves.get_title()) == (seeds > 1)
        # the lr panel names the SGD-unit methods it draws, and only those
        assert "SGD units" not in lrs.get_title() and "dog" not in lrs.get_title()
    finally:
        plt.close(fig)


# --- device ------------------------------------------------------------------------------------

def test_records_carry_the_device_and_cuda_without_a_gpu_is_refused(tmp_path) -> None:
    args = ["--task", QUADRATIC, "--optimizers", "adam@1e-2", "--no-extend", "--out",
            str(tmp_path), "--no-progress", "--no-plots"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda"):
            main([*args, "--device", "cuda"])
    assert main([*args, "--device", "auto"]) == 0
    (record,) = load_records(tmp_path)
    assert record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


# --- the user task -----------------------------------------------------------------------------

def test_user_task_runs_the_field_with_records_report_and_plot(tmp_path, capsys) -> None:
    """The default user plan (ours, the peers, a self-extending Adam sweep) on a tiny user
    task, through the same records, report and figure as the registered tasks."""
    assert main(["--task", QUADRATIC, "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    task = group(load_records(tmp_path))[QUADRATIC]
    assert {"psdasgd", "pssps", "prodigy", "dadapt-adam", "sf-adamw", "dog", "momsps"} <= \
        set(task.rows)
    assert task.metric == "distance" and task.higher_is_better is False
    assert all(len(row.runs) == 1 for row in task.rows.values())
    assert f"### {QUADRATIC} — distance (lower is better)" in out
    (plot,) = (tmp_path / "plots").glob("*.png")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_user_task_errors_name_the_fix(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no function 'nope'"):
        main(["--task", f"{HERE / 'user_task_quadratic.py'}:nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no file"):
        main(["--task", "missing_file.py:make", "--out", str(tmp_path)])


# --- layout ---------------------------------------------------------------------------------

def test_plots_and_report_do_not_import_each_other() -> None:
    """The data model lives in results.py; the report draws the plots, the plots never
    reach back into the report."""
    import ast

    import lrfree.bench.plots as plots

    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert "lrfree.bench.report" not in imported


def test_tied_methods_share_the_mean_of_their_places() -> None:
    """Two methods at the same final metric (e.g. both at chance) get the same rank, the
    mean of the places they span; a diverged run ranks last, and two diverged runs
    tie there too. Sorting alone would rank the tie by the order the rows were read."""
    records = [_record("t", "A", "ours", 0, 0.5), _record("t", "B", "peer", 0, 0.9),
               _record("t", "C", "peer", 0, 0.5), _record("t", "D", "peer", 0, 0.1),
               _record("t", "E", "peer", 0, None), _record("t", "F", "peer", 0, None)]
    ranks = lr_free_ranks(group(records)["t"])
    assert ranks == {"B": 1.0, "A": 2.5, "C": 2.5, "D": 4.0, "E": 5.5, "F": 5.5}
