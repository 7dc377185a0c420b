"""`python -m lrfree.bench` / `lrfree-bench`: run a suite, then print the regenerated report.

With no arguments it runs the quick plan (3-5 minutes on 2 CPU cores, one seed): the
convex task (logreg) with every configuration, and a small VGG on Fashion-MNIST (100 steps)
with ours, an Adam sweep and two peers. The report lands in bench-out/quick/report.md,
one figure per task in bench-out/quick/plots/.

Your own model: `--task mypkg.mytask:make` (or `--task path/to/file.py:make`), where
make() returns the model, the train and eval batches, the loss and the metric
(docs/your_model.md). It runs ours, the LR-free peers and an Adam sweep.

Every hand-tuned sweep whose best lr lands at the edge of its grid is extended one
half-decade at a time until the best is inside (the report says which lrs were added);
--no-extend turns this off. Finished runs are saved one file each: an interrupted suite
resumes where it stopped when the same command is run again.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

import torch

from lrfree.bench import grid
from lrfree.bench.optimizers import PRESETS, SCHEDULES, expand, get_spec, optimizer_names
from lrfree.bench.report import build_report
from lrfree.bench.results import SWEEPS, TaskResults, group, load_records
from lrfree.bench.runner import RunKey, resolve_device, run_suite, safe_name
from lrfree.bench.tasks import TASKS, is_user_task

# Per task, what the default run trains (a task missing here gets PRESETS["default"]).
# logreg's best lrs lie above the neural-net grids, so its sweeps are widened upward.
# vgg rather than resnet20: at the quick budget's 100 steps it is the one that learns.
QUICK_PLAN: dict[str, list[str]] = {
    "logreg": ["ours", "adam-sweep", "adam@3e-2", "adam@1e-1", "adam-avg@3e-2", "sgd-sweep",
               "sgdm@3e-1", "sgdm@1", "peers"],
    "vgg": ["psdasgd", "psdasgd-avg", "psdasgd-sf", "pssps", "adam@3e-4", "adam@1e-3",
            "adam@3e-3", "prodigy", "sf-adamw"],
}
# One torch thread unless --threads says otherwise: the suite's models are small, and on a
# machine whose other cores are busy, OpenMP threads spin-wait for each other. The
# README's 1000-step example took 196 s on torch's default 2 threads and 18 s on 1 with
# one other process busy on the 2-core machine; idle, 3-6 s either way (docs/benchmarks.md).
DEFAULT_THREADS = 1


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


def _names_epilog() -> str:
    def block(title: str, names: list[str]) -> str:
        # names contain hyphens: wrap only at the spaces between them
        return title + "\n" + textwrap.fill(", ".join(names), 88, initial_indent="  ",
                                            subsequent_indent="  ", break_on_hyphens=False,
                                            break_long_words=False)

    presets = [f"{name} = {', '.join(members)}" for name, members in PRESETS.items()
               if name not in ("all", "ablations")]
    return "\n\n".join([
        block("tasks:", [*TASKS, "all", "or your own: module:function / file.py:function"]),
        block("optimizers:", optimizer_names()),
        block("any lr of a sweep family:", ["adam@<lr>", "adam-avg@<lr>", "sgdm@<lr>",
                                              "sf-adamw@<lr>"]),
        "presets:\n" + "\n".join(f"  {line}" for line in presets)
        + "\n  all = every optimizer above; ablations = the ablation configurations",
    ])


def build_parser() -> argparse.ArgumentParser:
    """The command line; see the module docstring for what the defaults run."""
    parser = argparse.ArgumentParser(prog="lrfree-bench", description=__doc__,
                                     epilog=_names_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", "--task", type=_csv, default=None,
                        help="comma list of task names (below), or your own task as "
                             f"module:function (default: the quick plan {', '.join(QUICK_PLAN)}; "
                             "'all' for every registered task)")
    parser.add_argument("--optimizers", type=_csv, default=None,
                        help="comma list of optimizer names or presets (below); default: the "
                             "plan's list per task, else 'default'")
    parser.add_argument("--seeds", type=parse_seeds, default=[0],
                        help="'0,1,2' or a count (default: 1 seed, 0)")
    parser.add_argument("--budget", choices=("tiny", "quick", "full"), default="quick")
    parser.add_argument("--out", type=Path, default=None, help="default: bench-out/<budget>")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="'none' is the no-schedule ablation; it skips methods without an lr")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where models and batches live (auto: cuda if available, else cpu)")
    parser.add_argument("--report-only", action="store_true",
                        help="only regenerate the report from the JSON files in --out")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads (default {DEFAULT_THREADS}: the models are "
                             "small and extra threads spin-wait on a busy machine)")
    parser.add_argument("--no-extend", action="store_true",
                        help="do not extend a sweep whose best lr is at the edge of its grid")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _plan_for(task: str) -> list[str]:
    if is_user_task(task):
        from lrfree.bench.tasks.user import USER_PLAN

        return USER_PLAN
    return QUICK_PLAN.get(task, PRESETS["default"])


def plan_tasks(args: argparse.Namespace) -> list[str]:
    """The task names the arguments ask for."""
    tasks = args.tasks or list(QUICK_PLAN)
    if tasks == ["all"]:
        tasks = list(TASKS)
    for task in tasks:
        if task not in TASKS and not is_user_task(task):
            raise SystemExit(f"unknown task {task!r}; known: {', '.join(TASKS)}, or your own "
                             "as module:function (see --help)")
    return tasks


def plan_keys(args: argparse.Namespace) -> list[RunKey]:
    """Every (task, optimizer, seed) the arguments ask for, in run order."""
    keys = []
    for task in plan_tasks(args):
        names = expand(args.optimizers or _plan_for(task))
        if args.schedule == "none":
            names = [n for n in names if get_spec(n).scheduled]
        keys += [RunKey(task, name, seed, args.budget, args.schedule)
                 for seed in args.seeds for name in names]
    return keys


def _planned_results(out: Path, args: argparse.Namespace, task: str) -> TaskResults | None:
    """The task's results under `out` restricted to this command's seeds, budget, schedule."""
    folder = out / safe_name(task)
    records = [r for r in (load_records(folder) if folder.is_dir() else [])
               if r["seed"] in args.seeds and r["budget"] == args.budget
               and r["schedule"] == args.schedule]
    return group(records).get(task)


def extension_keys(out: Path, args: argparse.Namespace) -> list[RunKey]:
    """The next round of the grid-edge rule: for each task and sweep whose best lr is at an
    edge of its grid, the next lr beyond that edge, for every seed."""
    keys = []
    for task in plan_tasks(args):
        results = _planned_results(out, args, task)
        if results is None:
            continue
        for family, _ in SWEEPS:
            name = grid.extension(results, family)
            if name is not None:
                keys += [RunKey(task, name, seed, args.budget, args.schedule, extension=True)
                         for seed in args.seeds]
    return keys


def _check(args: argparse.Namespace) -> None:
    """Resolve every name and import every user task, so that a typo fails at once."""
    plan_keys(args)
    for task in plan_tasks(args):
        if is_user_task(task):
            from lrfree.bench.tasks.user import load_target

            load_target(task)


def _run(args: argparse.Namespace, out: Path, command: str, device: str) -> dict[RunKey, str]:
    failures = run_suite(plan_keys(args), out, command=command, progress=not args.no_progress,
                         device=device).failures
    while not args.no_extend:
        keys = [k for k in extension_keys(out, args) if k not in failures]
        if not keys:
            break
        for key in keys:
            print(f"grid-edge rule: {key.task}: best lr at the edge of the sweep, adding "
                  f"{key.optimizer} seed {key.seed}", file=sys.stderr)
        result = run_suite(keys, out, command=command, progress=not args.no_progress,
                           device=device)
        failures.update(result.failures)
        if all(k in result.failures for k in keys):
            break
    return failures


def main(argv: list[str] | None = None,
         program: tuple[str, ...] = ("python", "-m", "lrfree.bench")) -> int:
    """Entry point of `lrfree-bench`; ``program`` is how the records name the command (a
    research script that registers its own configurations passes its own)."""
    args = build_parser().parse_args(argv)
    out: Path = args.out or Path("bench-out") / args.budget
    command = shlex.join([*program, *(sys.argv[1:] if argv is None else argv)])
    failures: dict[RunKey, str] = {}
    try:
        if not args.report_only:
            try:
                device = str(resolve_device(args.device))
                _check(args)  # unknown names fail here, before anything runs
            except (KeyError, ValueError, TypeError, OSError, AttributeError,
                    ImportError) as exc:
                raise SystemExit(str(exc).strip('"')) from None
            threads = args.threads or DEFAULT_THREADS
            torch.set_num_threads(threads)
            print(f"device: {device}; torch threads: {threads}"
                  + ("" if args.threads else " (default; --threads N to change)"),
                  file=sys.stderr)
            failures = _run(args, out, command, device)
        report = build_report(out, plots=not args.no_plots)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished run is saved under {out}; to resume (finished "
              f"runs are skipped):\n  {command}", file=sys.stderr)
        return 130
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
