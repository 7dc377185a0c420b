"""Run (task, optimizer, seed, budget) combinations, one JSON file per finished run.

A file is written atomically when its run ends and an existing file is skipped, so an
interrupted suite resumes where it stopped. Divergence (a `Diverged` from the log, a
non-finite final metric, or an exception raised while the parameters are non-finite) is
recorded in the file, never dropped.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrfree.bench.optimizers import get_spec, make_factory
from lrfree.bench.tasks import get_task
from lrfree.bench.tasks.base import Diverged, OptimizerHandle, TrainLog

PACKAGES = ("torch", "numpy", "lrfree", "dadaptation", "prodigyopt", "schedulefree",
            "dog-optimizer", "momsps", "scikit-learn", "scipy")


@dataclass(frozen=True)
class RunKey:
    """One benchmark run. `extension`: added by the grid-edge rule (recorded, not part of
    the run's identity)."""

    task: str
    optimizer: str
    seed: int
    budget: str
    schedule: str = "cosine"
    extension: bool = field(default=False, compare=False)

    def path(self, out: Path) -> Path:
        """Where this run's record lives under `out`."""
        return out / safe_name(self.task) / f"{self.optimizer}.{self.schedule}.seed{self.seed}.json"


def safe_name(task: str) -> str:
    """A task name as a directory name (a user task is named `module:function`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task)


def seed_everything(seed: int) -> None:
    """Seed every generator a task may draw from before it builds its model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str | None]:
    """Python and package versions; None for a package that is not installed."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine(threads: int) -> dict[str, Any]:
    """What the timings depend on; `threads` = torch intra-op threads the run used."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def git_revision() -> str | None:
    """The source revision, with '+dirty' for uncommitted changes; None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _params_finite(handle: OptimizerHandle | None) -> bool:
    if handle is None:
        return True
    return all(bool(torch.isfinite(p).all())
               for g in handle.optimizer.param_groups for p in g["params"])


@contextmanager
def _threads(limit: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads for one run (optional task attribute `max_threads`).

    Tiny models gain nothing from threads, and on a busy machine their spin-waits made
    logreg 15x slower with 2 threads than with 1.
    """
    before = torch.get_num_threads()
    if limit is not None and limit < before:
        torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def run_one(key: RunKey, command: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run one combination on `device` and return its record (does not write it)."""
    task = get_task(key.task)
    base_factory = make_factory(key.optimizer, key.schedule)
    built: list[OptimizerHandle] = []

    def factory(params: Iterable[Any], total_steps: int) -> OptimizerHandle:
        built.append(base_factory(params, total_steps))
        return built[-1]

    prepare = getattr(task, "prepare", None)
    if prepare is not None:
        # Optional task hook (not in the Task protocol): load data / solve for f* before timing.
        prepare(key.budget)
    log = TrainLog()
    seed_everything(key.seed)
    diverged, reason, final = False, None, math.nan
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        with _threads(getattr(task, "max_threads", None)):
            threads = torch.get_num_threads()
            final = float(task.run(factory, key.seed, key.budget, log, device=torch.device(device)))
    except (Diverged, FloatingPointError) as exc:
        # FloatingPointError covers lrfree.NonFiniteError (a NaN loss/gradient refused).
        diverged, reason = True, f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        # A peer may assert on NaN state before the log sees it; that is divergence, not a bug.
        if _params_finite(built[-1] if built else None):
            raise
        diverged, reason = True, f"{type(exc).__name__} with non-finite parameters: {exc}"
    wall = time.perf_counter() - start
    if not diverged and not math.isfinite(final):
        diverged, reason = True, f"non-finite final metric {final}"
    spec = get_spec(key.optimizer)
    return {
        "task": key.task,
        "task_name": task.name,
        "family": task.family,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "optimizer": key.optimizer,
        "optimizer_family": spec.family,
        "lr": spec.lr,
        "schedule": key.schedule,
        "schedule_applied": spec.scheduled and key.schedule != "none",
        "seed": key.seed,
        "sweep_extension": key.extension,
        "device": str(torch.device(device)),
        "budget": key.budget,
        "budget_detail": _budget_detail(task, key.budget),
        "final_metric": _finite_or_none(final),
        "diverged": diverged,
        "diverged_reason": reason,
        "wall_time_s": wall,
        "curves": {k: [_finite_or_none(float(v)) for v in vals]
                   for k, vals in log.as_dict().items()},
        "versions": versions(),
        "machine": machine(threads),
        "git": git_revision(),
        "command": command if command is not None else " ".join(sys.argv),
    }


def _budget_detail(task: Any, level: str) -> dict[str, Any]:
    budget = task.budget(level)
    return {"steps": budget.steps, "batch_size": budget.batch_size,
            "eval_every": budget.eval_every, "extra": {k: repr(v) for k, v in budget.extra.items()}}


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write JSON so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass
class SuiteResult:
    """Paths of every requested run's record, and the runs that failed with an error."""

    paths: list[Path]
    failures: dict[RunKey, str]


def run_suite(keys: list[RunKey], out: Path, command: str | None = None,
              progress: bool = True, device: str = "cpu") -> SuiteResult:
    """Run every key whose file is missing under `out`, on `device`.

    A run that fails with an error that is not divergence (a missing optional dependency, a
    bug) writes no file, so a later call retries it; the others still run. A
    KeyboardInterrupt stops the suite between two writes: every finished run is on disk.
    """
    from tqdm.auto import tqdm

    todo = [k for k in keys if not k.path(out).exists()]
    if todo:
        # torch imports its compiler stack on the first optimizer built (seconds); pay it
        # here so that it is not charged to whichever run happens to come first.
        import torch._dynamo  # noqa: F401
    skipped = len(keys) - len(todo)
    bar = tqdm(todo, desc="bench", unit="run", disable=not progress or not todo)
    if skipped and progress:
        tqdm.write(f"skipping {skipped} finished run(s) already in {out}")
    failures: dict[RunKey, str] = {}
    for key in bar:
        bar.set_postfix_str(f"{key.task} {key.optimizer} s{key.seed}")
        try:
            record = run_one(key, command, device)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, never swallowed
            failures[key] = f"{type(exc).__name__}: {exc}"
            tqdm.write(f"FAILED {key.task} {key.optimizer} seed {key.seed}: {failures[key]}")
            continue
        write_atomic(key.path(out), record)
    return SuiteResult([k.path(out) for k in keys], failures)
