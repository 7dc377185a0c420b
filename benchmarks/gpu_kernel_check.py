"""The fused Triton step of PSDASGD and PSSPS on a CUDA machine (issue 16), in one run:

1. kernel == foreach: each optimizer stepped 50 times through the kernel (``fused=True``; the
   first step is eager by design) and through the foreach step (``fused=False``) from the
   same start with the same gradients, on a transformer-shaped parameter list in float32
   and float64; prints and records the largest difference per dtype, absolute and relative
   to each tensor's largest magnitude, against the bound tests/test_triton_step.py allows
   (1000 units of rounding);
2. speed: the median step time (CUDA events around ``step()``) of both paths, with and
   without the non-finite check, against ``torch.optim.AdamW(fused=True)`` at ~12M and
   ~134M parameters (the shapes of benchmarks/step_speed.py), in rounds whose order rotates;
   ratios are taken within a round, the median over rounds reported.

Writes a JSON file (the path is the one argument) with the machine, versions, both parts
and the wall time. About a minute on an H200.

    python benchmarks/gpu_kernel_check.py /tmp/kernel_check.json
    python benchmarks/gpu_kernel_check.py /tmp/smoke.json --device cpu --interpret  # CPU smoke

``--interpret`` runs Triton's interpreter on CPU tensors with tiny sizes: it checks this
script and the kernels' arithmetic, not speed (its times mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ULPS = 1000  # the bound of tests/test_triton_step.py, in units of rounding of the dtype


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="where to write the JSON results")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--interpret", action="store_true",
                    help="CPU smoke test: Triton's interpreter on CPU tensors, tiny sizes")
    ap.add_argument("--steps", type=int, default=50, help="steps of the equality check")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per size")
    ap.add_argument("--timed-steps", type=int, default=10, help="timed steps per round")
    return ap.parse_args()


ARGS = parse()
if ARGS.interpret:  # before the kernels are defined
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import step_speed  # noqa: E402

import lrfree  # noqa: E402
from lrfree.kernels import triton_step  # noqa: E402

DEVICE = torch.device(ARGS.device)
if ARGS.interpret:
    if DEVICE.type != "cpu":
        sys.exit("--interpret runs on CPU tensors: use --device cpu")
    triton_step.INTERPRET_ON_CPU = True
elif DEVICE.type != "cuda" or not torch.cuda.is_available():
    sys.exit("needs a CUDA device (or --device cpu --interpret for the smoke test)")
OPTIMIZERS = {"psdasgd": lrfree.PSDASGD, "pssps": lrfree.PSSPS}
# (width, depth, vocab): the equality check's model, and the timed sizes
CHECK_SHAPE = (32, 1, 100) if ARGS.interpret else (256, 4, 8000)
TIMED = {"tiny": (32, 1, 100)} if ARGS.interpret else \
    {k: step_speed.SIZES[k] for k in ("12M", "134M")}


def params_of(shape: tuple[int, int, int], dtype: torch.dtype) -> list[nn.Parameter]:
    step_speed.DEVICE = torch.device("cpu")
    return [nn.Parameter(p.detach().to(DEVICE, dtype)) for p in
            step_speed.transformer_params(*shape)]


# ------------------------------------------------------------------ 1. equality
def run(name: str, dtype: torch.dtype, fused: bool, steps: int
        ) -> tuple[list[nn.Parameter], Any, int]:
    """``steps`` steps on a noisy quadratic (minimum at 0.5), the same gradients for both
    paths; returns the parameters, the optimizer and how many steps took the kernel."""
    params = params_of(CHECK_SHAPE, dtype)
    opt = OPTIMIZERS[name](params, fused=fused, weight_decay=0.01)
    real = getattr(triton_step, f"_{name}_step")
    calls = []

    def counted(*args: Any) -> None:
        calls.append(1)
        real(*args)

    setattr(triton_step, f"_{name}_step", counted)
    try:
        gen = torch.Generator(DEVICE)
        for k in range(steps):
            gen.manual_seed(k)
            loss = torch.zeros((), device=DEVICE, dtype=dtype)
            for p in params:
                noise = torch.randn(p.shape, generator=gen, device=DEVICE, dtype=dtype)
                p.grad = (p.detach() - 0.5) + 0.1 * noise
                loss = loss + 0.5 * ((p.detach() - 0.5) ** 2).sum()
            for group in opt.param_groups:  # a schedule: lr changes every step
                group["lr"] = 1.0 - 0.5 * k / steps
            opt.step(loss=loss) if name == "pssps" else opt.step()
    finally:
        setattr(triton_step, f"_{name}_step", real)
    return params, opt, len(calls)


def values(params: list[nn.Parameter], opt: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        out[f"x{i}"] = p.detach()
        out.update({f"{k}{i}": v for k, v in opt.state[p].items()})
    out.update({f"estimate {k}": v for k, v in opt.param_groups[0]["estimate"].items()})
    return out


def equality(log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for name in OPTIMIZERS:
        for dtype in (torch.float32, torch.float64):
            steps = ARGS.steps if not ARGS.interpret else min(ARGS.steps, 5)
            params_k, opt_k, calls = run(name, dtype, True, steps)
            params_e, opt_e, _ = run(name, dtype, False, steps)
            kernel, eager = values(params_k, opt_k), values(params_e, opt_e)
            abs_diff, rel_diff, worst = 0.0, 0.0, ""
            for key, ref in eager.items():
                if not ref.numel():
                    continue
                diff = float((kernel[key].double() - ref.double()).abs().max())
                rel = diff / max(float(ref.double().abs().max()), 1e-300)
                abs_diff = max(abs_diff, diff)
                if rel >= rel_diff:
                    rel_diff, worst = rel, key
            allowed = ULPS * torch.finfo(dtype).eps
            row = {"optimizer": name, "dtype": str(dtype).replace("torch.", ""),
                   "steps": steps, "kernel_steps": calls, "max_abs_diff": abs_diff,
                   "max_rel_diff": rel_diff, "worst_tensor": worst, "rel_allowed": allowed,
                   "d_or_eta": float(opt_k.param_groups[0].get("d", opt_k.param_groups[0].get(
                       "polyak_step"))),
                   "ok": rel_diff <= allowed and calls == steps - 1}
            log(f"{name:8s} {row['dtype']:8s} kernel steps {calls}/{steps}  max |diff| "
                f"{abs_diff:.3g}  max relative {rel_diff:.3g} ({worst}; allowed "
                f"{allowed:.3g})  {'ok' if row['ok'] else 'FAIL'}")
            rows.append(row)
    return rows


# --------------------------------------------------------------------- 2. speed
def factories() -> dict[str, Callable[[list[nn.Parameter]], Any]]:
    return {
        "AdamW (fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "PSDASGD (foreach)": lambda p: lrfree.PSDASGD(p, fused=False, schedule_free=False),
        "PSDASGD (kernel)": lambda p: lrfree.PSDASGD(p, fused=True),
        "PSDASGD (kernel, unchecked)":
            lambda p: lrfree.PSDASGD(p, fused=True, nonfinite="unchecked"),
        "PSSPS (foreach)": lambda p: lrfree.PSSPS(p, fused=False),
        "PSSPS (kernel)": lambda p: lrfree.PSSPS(p, fused=True),
        "PSSPS (kernel, unchecked)":
            lambda p: lrfree.PSSPS(p, fused=True, nonfinite="unchecked"),
    }


def step_time(opt: Any, params: list[nn.Parameter], pool: list[list[torch.Tensor]],
              steps: int) -> float:
    """Median milliseconds of ``steps`` steps; gradients alternate between two sets."""
    loss = torch.ones((), device=DEVICE)
    cuda = DEVICE.type == "cuda"
    times = []
    for k in range(steps):
        for p, g in zip(params, pool[k % len(pool)]):
            p.grad = g
        if cuda:
            torch.cuda.synchronize()
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        opt.step(loss=loss) if isinstance(opt, lrfree.PSSPS) else opt.step()
        if cuda:
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def speed(log: Callable[[str], None]) -> dict[str, Any]:
    out = {}
    for size, shape in TIMED.items():
        params = params_of(shape, torch.float32)
        gen = torch.Generator(DEVICE).manual_seed(0)
        pool = [[torch.randn(p.shape, generator=gen, device=DEVICE) * 1e-3 for p in params]
                for _ in range(2)]
        opts = {label: make(params) for label, make in factories().items()}
        for opt in opts.values():  # warm-up: the first (eager) step, kernel compilation
            step_time(opt, params, pool, 3)
        rounds: dict[str, list[float]] = {label: [] for label in opts}
        ratios: dict[str, list[float]] = {label: [] for label in opts}
        labels = list(opts)
        for r in range(ARGS.rounds):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            times = {label: step_time(opts[label], params, pool, ARGS.timed_steps)
                     for label in order}
            for label in labels:
                rounds[label].append(times[label])
                ratios[label].append(times[label] / times["AdamW (fused)"])
        used = {label: bool(getattr(opts[label], "_triton_tables", None)) for label in labels
                if label.startswith("PS")}
        out[size] = {"parameters": sum(p.numel() for p in params), "tensors": len(params),
                     "rounds": ARGS.rounds, "steps_per_round": ARGS.timed_steps,
                     "median_ms": {k: statistics.median(v) for k, v in rounds.items()},
                     "ratio_to_adamw_fused": {k: statistics.median(v) for k, v in ratios.items()},
                     "ratio_range": {k: [min(v), max(v)] for k, v in ratios.items()},
                     "kernel_path_built": used}
        log(f"{size}: {out[size]['parameters'] / 1e6:.1f}M parameters, {len(params)} tensors")
        for label in labels:
            log(f"  {label:28s} {out[size]['median_ms'][label]:8.3f} ms  "
                f"{out[size]['ratio_to_adamw_fused'][label]:6.2f}x AdamW(fused)")
        del opts, pool, params
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    began = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)

    import triton
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "triton": triton.__version__, "lrfree": lrfree.__version__,
               "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
               "cuda": torch.version.cuda, "interpret": ARGS.interpret}
    log(f"machine: {machine}")
    result: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "machine": machine}
    result["equality"] = equality(log)
    result["speed"] = speed(log)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["ok"] = all(row["ok"] for row in result["equality"])
    Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ARGS.out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {ARGS.out} ({result['wall_s']} s); equality {'ok' if result['ok'] else 'FAILED'}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
