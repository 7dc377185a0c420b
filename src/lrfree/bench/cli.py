"""`python -m lrfree.bench` / `lrfree-bench`: run a suite, then print the regenerated report.

With no arguments it runs the quick plan (about 3 minutes on 2 CPU cores): the convex task
with every configuration, and a small VGG on Fashion-MNIST (100 steps) with ours, three
Adam lrs and two peers; one seed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from lrfree.bench.optimizers import PRESETS, SCHEDULES, expand, get_spec
from lrfree.bench.report import build_report
from lrfree.bench.runner import RunKey, run_suite
from lrfree.bench.tasks import TASKS

# Per task, what the default run trains (a task missing here gets PRESETS["default"]).
# logreg's best lrs lie above the neural-net grids, so its sweeps are widened upward.
# vgg rather than resnet20: at the quick budget's 100 steps it is the one that learns.
QUICK_PLAN: dict[str, list[str]] = {
    "logreg": ["ours", "adam-sweep", "adam@3e-2", "adam@1e-1", "adam-avg@3e-2", "sgd-sweep",
               "sgdm@3e-1", "sgdm@1", "peers"],
    "vgg": ["psdasgd", "psdasgd-avg", "pssps", "adam@3e-4", "adam@1e-3", "adam@3e-3",
            "prodigy", "sf-adamw"],
}


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]; a single number n -> range(n)."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    count = int(text)
    if count < 1:
        # `--seeds 0` reads like "seed 0" but is a count of zero: say so instead of running
        # nothing
        raise argparse.ArgumentTypeError(
            f"--seeds {text} is a count of seeds and must be >= 1; for seed 0 alone use 1, "
            "for a list use commas (e.g. 0,1)")
    return list(range(count))


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line; see the module docstring for what the defaults run."""
    parser = argparse.ArgumentParser(prog="lrfree-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=_csv, default=None,
                        help=f"comma list from {', '.join(TASKS)} (default: the quick plan "
                             f"{', '.join(QUICK_PLAN)}; 'all' for every task)")
    parser.add_argument("--optimizers", type=_csv, default=None,
                        help=f"comma list of names or presets ({', '.join(PRESETS)}); "
                             "default: the plan's list per task, else 'default'")
    parser.add_argument("--seeds", type=parse_seeds, default=[0],
                        help="'0,1,2' or a count (default: 1 seed, 0)")
    parser.add_argument("--budget", choices=("tiny", "quick", "full"), default="quick")
    parser.add_argument("--out", type=Path, default=None, help="default: bench-out/<budget>")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="'none' is the no-schedule ablation; it skips methods without an lr")
    parser.add_argument("--report-only", action="store_true",
                        help="only regenerate the report from the JSON files in --out")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice, or 1 when the "
                             "machine is already busy)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def plan_keys(args: argparse.Namespace) -> list[RunKey]:
    """Every (task, optimizer, seed) the arguments ask for, in run order."""
    tasks = args.tasks or list(QUICK_PLAN)
    if tasks == ["all"]:
        tasks = list(TASKS)
    keys = []
    for task in tasks:
        if task not in TASKS:
            raise SystemExit(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        names = expand(args.optimizers or QUICK_PLAN.get(task, PRESETS["default"]))
        if args.schedule == "none":
            names = [n for n in names if get_spec(n).scheduled]
        keys += [RunKey(task, name, seed, args.budget, args.schedule)
                 for seed in args.seeds for name in names]
    return keys


def _default_threads() -> int:
    """torch's default, or 1 when other work already loads the machine.

    OpenMP threads spin while waiting for each other; with the cores shared, a 100-step
    VGG run took 48 s on 2 threads against 9 s on 1 (8 s with OMP_WAIT_POLICY=PASSIVE,
    which must be set before torch is imported).
    """
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= 1.0
    if busy and torch.get_num_threads() > 1:
        print("machine busy (load average >= 1): using 1 torch thread; --threads overrides",
              file=sys.stderr)
        return 1
    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lrfree-bench`."""
    args = build_parser().parse_args(argv)
    out: Path = args.out or Path("bench-out") / args.budget
    failures: dict[RunKey, str] = {}
    if not args.report_only:
        torch.set_num_threads(args.threads or _default_threads())
        try:
            keys = plan_keys(args)
        except KeyError as exc:
            raise SystemExit(str(exc)) from None
        command = shlex.join(["python", "-m", "lrfree.bench",
                              *(sys.argv[1:] if argv is None else argv)])
        failures = run_suite(keys, out, command=command, progress=not args.no_progress).failures
    report = build_report(out, plots=not args.no_plots)
    print(report.markdown)
    print(f"\nreport: {report.path}")
    for path in report.plots:
        print(f"plot: {path}")
    if failures:
        print(f"\n{len(failures)} run(s) failed and were not recorded (rerun to retry):",
              file=sys.stderr)
        for key, error in failures.items():
            print(f"  {key.task} {key.optimizer} seed {key.seed}: {error}", file=sys.stderr)
        return 1
    return 0
