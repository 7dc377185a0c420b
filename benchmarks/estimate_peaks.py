"""Where each learning-rate-free method's effective lr peaked, and when, in committed runs.

Reads the saved curves (``curves.effective_lr``, logged every 10 steps) of every run in a
results folder and prints, per task and method, the peak effective lr (Adam units) and the
first logged step at which half of it was reached, averaged over seeds. The numbers quoted in
docs/algorithms.md section 8 and the notes of the reports come from here.

    python benchmarks/estimate_peaks.py benchmarks/results/full
    python benchmarks/estimate_peaks.py benchmarks/results/quick
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ("psdasgd", "psdasgd-start3e-3", "psdasgd-start1e-5", "psdasgd-start1e-4", "pssps",
           "prodigy", "dadapt-adam", "sf-adamw")


def main(folder: Path) -> None:
    rows: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for path in sorted(folder.glob("*/*.cosine.seed*.json")):
        record = json.loads(path.read_text())
        if record["optimizer"] not in METHODS and not record["optimizer"].startswith("psdasgd-"):
            continue
        lrs, steps = record["curves"]["effective_lr"], record["curves"]["steps"]
        peak = max(lrs)
        half = next(step for step, lr in zip(steps, lrs) if lr >= 0.5 * peak)
        rows[(record["task"], record["optimizer"])].append((peak, half))
    print(f"{folder}: peak effective lr and first logged step at half of it (mean over seeds)")
    print("| task | method | seeds | peak lr | half-peak step |\n|---|---|---|---|---|")
    for (task, name), values in sorted(rows.items()):
        peaks, halves = zip(*values)
        print(f"| {task} | {name} | {len(values)} | {statistics.fmean(peaks):.2e} | "
              f"{statistics.fmean(halves):.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/full"))
