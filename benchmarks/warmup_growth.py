"""How fast each learning-rate-free estimate grows from its start, as a function of gradient noise.

The quick benchmark's vision runs are 75-100 steps long, and PS-DA-SGD spends most of them
warming up. This isolates the warm-up: one parameter vector of n = 200,000 coordinates whose
gradient is ``mu + sigma * noise`` at every step (a linear objective: the gradient does not
depend on the iterate, so nothing but the estimate changes). ``mu`` is fixed per seed; the
signal-to-noise ratio ``snr = mean|mu| / sigma`` is varied. For each optimizer we record the
effective learning rate in Adam units (``group["effective_lr"]`` for ours, ``d * lr`` for the
peers) and report the step at which it first reaches 1e-5, 1e-4 and 1e-3 (median over seeds;
"-" = not within the horizon).

Also run: DAdaptAdam with beta2 = 0.9. Its published rule divides the numerator by the
un-bias-corrected second moment, which inflates the early bound by about
1/sqrt(1 - beta2^k) (about 30x at k = 1 with beta2 = 0.999); with beta2 = 0.9 that inflation
fades within ~20 steps, so if it explains DAdaptAdam's fast start, that row should be slower.

    python benchmarks/warmup_growth.py   # writes benchmarks/results/warmup_growth.{json,md}
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

import dadaptation
import prodigyopt
import torch

import lrfree

N_COORDS = 200_000
STEPS = 80
SEEDS = (0, 1, 2)
SNRS = (3.0, 1.0, 0.3, 0.1)
LEVELS = (1e-5, 1e-4, 1e-3)

OPTIMIZERS = {
    "psdasgd (d0=1e-6, scaled units)": lambda ps: lrfree.PSDASGD(ps, d0=1e-6, schedule_free=False),
    "psdasgd (default: d0_lr=1e-6, Adam units)": lambda ps: lrfree.PSDASGD(ps, schedule_free=False),
    "dadaptation.DAdaptAdam": lambda ps: dadaptation.DAdaptAdam(ps, lr=1.0),
    "dadaptation.DAdaptAdam, beta2=0.9": lambda ps: dadaptation.DAdaptAdam(
        ps, lr=1.0, betas=(0.9, 0.9)),
    "prodigyopt.Prodigy": lambda ps: prodigyopt.Prodigy(ps, lr=1.0),
}


def effective_lr(opt: torch.optim.Optimizer) -> float:
    group = opt.param_groups[0]
    if "effective_lr" in group:
        return float(group["effective_lr"])
    return float(group["d"]) * float(group["lr"])


def trajectory(make, snr: float, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(N_COORDS, generator=gen) * 0.01
    sigma = float(mu.abs().mean()) / snr
    param = torch.nn.Parameter(torch.zeros(N_COORDS))
    opt = make([param])
    lrs = []
    for _ in range(STEPS):
        param.grad = mu + sigma * torch.randn(N_COORDS, generator=gen)
        opt.step()
        lrs.append(effective_lr(opt))
    return lrs


def first_step_reaching(lrs: list[float], level: float) -> int | None:
    return next((k + 1 for k, lr in enumerate(lrs) if lr >= level), None)


def median_step(steps: list[int | None]) -> int | None:
    # a run that never reaches the level counts as later than any that did
    ranked = sorted(steps, key=lambda s: float("inf") if s is None else s)
    return ranked[len(ranked) // 2]


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for snr in SNRS:
        for name, make in OPTIMIZERS.items():
            runs = [trajectory(make, snr, seed) for seed in SEEDS]
            results[f"{snr}|{name}"] = {
                "snr": snr,
                "optimizer": name,
                "effective_lr_per_seed": runs,
                "first_step_reaching": {
                    str(level): median_step([first_step_reaching(r, level) for r in runs])
                    for level in LEVELS
                },
                "effective_lr_at_20_median": statistics.median(r[19] for r in runs),
            }
    out = Path(__file__).parent / "results"
    meta = {
        "command": "python benchmarks/warmup_growth.py",
        "n_coords": N_COORDS, "steps": STEPS, "seeds": list(SEEDS),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "dadaptation": getattr(dadaptation, "__version__", "3.2"),
                     "prodigyopt": "1.1.2"},
        "machine": platform.platform(),
    }
    (out / "warmup_growth.json").write_text(json.dumps({"meta": meta, "results": results}))
    lines = [
        "# Warm-up growth of the learning-rate estimates",
        "",
        f"`{meta['command']}`; n = {N_COORDS}, {STEPS} steps, seeds {list(SEEDS)} (median); "
        f"torch {torch.__version__}; {meta['machine']}.",
        "Step at which the effective lr (Adam units) first reaches each level; '-' = not in "
        f"{STEPS} steps. Gradient = mu + sigma * noise, snr = mean|mu| / sigma.",
        "",
        "| snr | optimizer | reaches 1e-5 | reaches 1e-4 | reaches 1e-3 | lr at step 20 |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.values():
        reach = [row["first_step_reaching"][str(level)] for level in LEVELS]
        cells = " | ".join("-" if s is None else str(s) for s in reach)
        lines.append(f"| {row['snr']} | {row['optimizer']} | {cells} | "
                     f"{row['effective_lr_at_20_median']:.2e} |")
    (out / "warmup_growth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
