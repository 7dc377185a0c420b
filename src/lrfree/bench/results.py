"""The run records as data: loading, grouping by task and configuration, mean curves.

Both the report (tables) and the plots read this module; neither imports the other's
internals through it.
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LR_FREE = ("ours", "peer")
# The hand-tuned sweeps: record family, title in the report.
SWEEPS = (("adam", "Adam"), ("adam-avg", "Adam + average"), ("sgd", "SGD momentum"))


@dataclass
class Row:
    """All seeds of one optimizer configuration on one task."""

    label: str
    family: str
    lr: float | None
    schedule: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def finals(self) -> list[float]:
        return [r["final_metric"] for r in self.runs if not r["diverged"]]

    def diverged(self) -> int:
        return sum(r["diverged"] for r in self.runs)

    def mean(self) -> float:
        finals = self.finals()
        return statistics.fmean(finals) if finals else math.nan

    def std(self) -> float:
        finals = self.finals()
        return statistics.stdev(finals) if len(finals) > 1 else 0.0

    def extended(self) -> bool:
        """Whether the grid-edge rule added this sweep member (the runner tags it)."""
        return any(r.get("sweep_extension") for r in self.runs)


@dataclass
class TaskResults:
    name: str
    metric: str
    higher_is_better: bool
    rows: dict[str, Row] = field(default_factory=dict)

    def score(self, value: float) -> float:
        """Larger is better, diverged (nan) is worst."""
        if not math.isfinite(value):
            return -math.inf
        return value if self.higher_is_better else -value

    def standing(self, row: Row) -> tuple[bool, float]:
        """Sort key of a row, larger is better: a configuration that diverged on any seed
        comes after every one that never did, whatever the mean of its surviving seeds (a
        hand-tuner would not pick an lr that blew up on one seed)."""
        return row.diverged() == 0, self.score(row.mean())

    def sweep(self, family: str) -> list[Row]:
        """The scheduled members of one hand-tuned sweep."""
        return [r for r in self.rows.values() if r.family == family and r.schedule != "none"]

    def best_of(self, family: str) -> Row | None:
        """The sweep member of `family` (scheduled runs only) that stands highest."""
        return max(self.sweep(family), key=self.standing, default=None)


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every run record under `out` (temporary files of unfinished writes are ignored)."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).rglob("*.json"))
            if not p.name.startswith(".tmp-")]


def _label(record: dict[str, Any]) -> str:
    return record["optimizer"] + (" (no sched)" if record["schedule"] == "none" else "")


def group(records: list[dict[str, Any]]) -> dict[str, TaskResults]:
    """Records by task, then by row label."""
    tasks: dict[str, TaskResults] = {}
    for rec in records:
        task = tasks.setdefault(rec["task"], TaskResults(rec["task"], rec["metric"],
                                                         rec["higher_is_better"]))
        label = _label(rec)
        row = task.rows.setdefault(label, Row(label, rec["optimizer_family"], rec["lr"],
                                              rec["schedule"]))
        row.runs.append(rec)
    return tasks


def mean_curve(runs: list[dict[str, Any]], x_key: str, y_key: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, min, max over seeds on the steps every run reached (diverged runs end early)."""
    curves = [(r["curves"][x_key], r["curves"][y_key]) for r in runs if r["curves"][x_key]]
    if not curves:
        empty = np.array([])
        return empty, empty, empty, empty
    length = min(len(x) for x, _ in curves)
    ys = np.array([[math.nan if v is None else v for v in y[:length]] for _, y in curves])
    with warnings.catch_warnings():
        # Methods that expose no effective lr log NaN everywhere; that is not an error here.
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.array(curves[0][0][:length]), np.nanmean(ys, axis=0),
                np.nanmin(ys, axis=0), np.nanmax(ys, axis=0))
