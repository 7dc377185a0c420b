"""Optimizer step time and state memory against torch AdamW and the LR-free peers.

Models are laid out like real ones: a GPT-style transformer's parameter list (token and
position embeddings, per block two LayerNorms, qkv / out / two MLP matrices with biases) at
~1M, ~10M and ~50M parameters. Gradients are random (a pool of four sets, cycled), so the
step's cost is measured without a forward or backward pass.

Every optimizer steps the same parameters. A round times each optimizer in turn (rotating
the order from round to round) for a few steps; the ratio to AdamW (foreach) and AdamW
(fused) is taken within the round, so load from other processes moves numerator and
denominator together. The report gives the median ratio over rounds and its spread.

Our compiled step (``lrfree.fused``) is timed only at ``--fused-sizes`` (default 1M):
compiling it takes minutes per model on a small CPU machine. The C++ kernel
(``lrfree.fused(opt, kernel="cpp")``, rows "(cpp)") is timed at every size; its rows are left
out, with a message, where it cannot be built, and from the pass counts (its loop is not made
of aten ops).

A second part times end-to-end training of the benchmark's small VGG (images/s).

    python benchmarks/step_speed.py                        # the committed run
    python benchmarks/step_speed.py --sizes 1M --rounds 3  # a quick look
    python benchmarks/step_speed.py --sizes 10M --rounds 5 --only cpp --fused-sizes none \
        --vgg-rounds 0 --no-passes --out benchmarks/results/step_speed_cpp  # the kernel rows

One thread (``torch.set_num_threads(1)``): the machine is shared, and one core is the
setting the ratios are comparable in. Writes benchmarks/results/step_speed/.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import lrfree

SIZES = {"1M": (128, 5, 1000), "10M": (256, 12, 4096), "50M": (512, 15, 8192),
         # the GPU sizes of issue 16 (GPT-2-small-like at 134M)
         "12M": (384, 6, 4096), "134M": (768, 12, 64000), "570M": (1280, 26, 46000)}
#: where the parameters, gradients and state live (``--device``)
DEVICE = torch.device("cpu")
OUT = Path(__file__).parent / "results" / "step_speed"


def transformer_params(width: int, depth: int, vocab: int, seed: int = 0) -> list[nn.Parameter]:
    """The parameter tensors of a pre-LN GPT (tied head), in model order."""
    g = torch.Generator().manual_seed(seed)
    shapes: list[tuple[int, ...]] = [(vocab, width), (256, width)]
    for _ in range(depth):
        shapes += [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,),
                   (width,), (width,), (4 * width, width), (4 * width,), (width, 4 * width),
                   (width,)]
    shapes += [(width,), (width,)]
    return [nn.Parameter((torch.randn(s, generator=g) * 0.02).to(DEVICE)) for s in shapes]


def optimizer_factories(fused: bool = True, cpp: bool = True
                        ) -> dict[str, Callable[[list[nn.Parameter]], Any]]:
    import dadaptation
    import prodigyopt
    import schedulefree

    def schedule_free(params):
        opt = schedulefree.AdamWScheduleFree(params, lr=1e-3, warmup_steps=0)
        opt.train()
        return opt

    factories = {
        "AdamW (foreach)": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "AdamW (fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "PSDASGD (foreach)": lambda p: lrfree.PSDASGD(p, schedule_free=False),
        "PSDASGD (per-tensor)": lambda p: lrfree.PSDASGD(p, foreach=False, schedule_free=False),
        "PSDASGD (fused)": lambda p: lrfree.fused(lrfree.PSDASGD(p, schedule_free=False)),
        # the schedule-free iteration (docs/algorithms.md §4h): eager on every device
        "PSDASGD schedule-free (foreach)": lambda p: lrfree.PSDASGD(p, schedule_free=True),
        "PSSPS (foreach)": lambda p: lrfree.PSSPS(p),
        "PSSPS (per-tensor)": lambda p: lrfree.PSSPS(p, foreach=False),
        "PSSPS (fused)": lambda p: lrfree.fused(lrfree.PSSPS(p)),
        "PSDASGD (cpp)": lambda p: lrfree.fused(lrfree.PSDASGD(p, schedule_free=False),
                                                 kernel="cpp"),
        "PSSPS (cpp)": lambda p: lrfree.fused(lrfree.PSSPS(p), kernel="cpp"),
        "DAdaptAdam": lambda p: dadaptation.DAdaptAdam(p, lr=1.0),
        "Prodigy": lambda p: prodigyopt.Prodigy(p, lr=1.0),
        "AdamWScheduleFree": schedule_free,
    }
    if not fused:
        factories = {k: v for k, v in factories.items() if not k.startswith("PS") or "fused" not in k}
    if DEVICE.type != "cpu":  # the C++ kernel is CPU-only; per-tensor loops are no GPU choice
        factories = {k: v for k, v in factories.items()
                     if "(cpp)" not in k and "(per-tensor)" not in k}
        # on CUDA PSDASGD's default is the Triton kernel: the foreach row asks for foreach
        factories["PSDASGD (foreach)"] = lambda p: lrfree.PSDASGD(p, fused=False,
                                                                  schedule_free=False)
        factories["PSDASGD (kernel)"] = lambda p: lrfree.PSDASGD(p, fused=True)
        # without the non-finite check: no host sync at all (what GradScaler users run)
        factories["PSDASGD (kernel, unchecked)"] = \
            lambda p: lrfree.PSDASGD(p, fused=True, nonfinite="unchecked")
        factories["PSSPS (foreach, unchecked)"] = \
            lambda p: lrfree.PSSPS(p, fused=False, nonfinite="unchecked")
        # PSSPS's default on CUDA is the Triton kernel (two passes) too
        factories["PSSPS (foreach)"] = lambda p: lrfree.PSSPS(p, fused=False)
        factories["PSSPS (kernel)"] = lambda p: lrfree.PSSPS(p, fused=True)
        factories["PSSPS (kernel, unchecked)"] = \
            lambda p: lrfree.PSSPS(p, fused=True, nonfinite="unchecked")
    elif not cpp or not _cpp_available():
        factories = {k: v for k, v in factories.items() if "(cpp)" not in k}
    return factories


def _cpp_available() -> bool:
    from lrfree import kernels

    try:
        kernels.load()
    except RuntimeError as error:
        print(f"skipping the (cpp) rows: {error}", file=sys.stderr)
        return False
    return True


class PassCounter(TorchDispatchMode):
    """Counts what a step reads and writes of tensors of at least ``min_numel`` elements (the
    smallest parameter: so per-tensor scalars, stacked into a vector, do not count), by
    intercepting every aten op (a ``_foreach_*`` op is one op over all its tensors).

    ``passes`` = elements read + written / number of parameters: 1 is one full read (or
    write) of a parameter-sized set of tensors. A tensor read twice by one op (``dot(h, h)``)
    counts once; views, ``detach`` and allocations count nothing.
    """

    FREE = ("detach", "alias", "lift_fresh", "empty", "empty_strided", "empty_like")

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.elements = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func.overloadpacket.__name__ in self.FREE:
            return out
        seen: dict[tuple[int, int], int] = {}
        written = 0
        for i, arg in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            for t in tree_flatten(value)[0]:
                if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel:
                    if not arg.is_out:
                        seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = t.numel()
                    if arg.alias_info is not None and arg.alias_info.is_write:
                        written += t.numel()
        outs = {id(t) for i, arg in enumerate(func._schema.arguments) if arg.is_out
                for t in tree_flatten(args[i] if i < len(args) else kwargs.get(arg.name))[0]}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel and id(t) not in outs and \
                    (t.untyped_storage().data_ptr(), t.storage_offset()) not in seen:
                written += t.numel()
        if seen or written:
            self.elements += sum(seen.values()) + written
            self.ops += 1
        return out


def count_passes(opt: Any, params: list[nn.Parameter], grads: list[list[torch.Tensor]]
                 ) -> dict[str, float]:
    """Tensor passes and ops of one steady-state step (after a state-creating first one).
    The smallest parameter must be larger than the number of tensors."""
    loss = torch.tensor(1.0)
    smallest = min(p.numel() for p in params)
    assert smallest > len(params), "stacked per-tensor scalars would count as tensor passes"
    for k in range(3):
        for p, g in zip(params, grads[k % len(grads)]):
            p.grad = g.clone()
        counter = PassCounter(smallest)
        with counter if k == 2 else contextlib.nullcontext():
            opt.step(loss=loss) if isinstance(opt, lrfree.PSSPS) else opt.step()
    numel = sum(p.numel() for p in params)
    return {"passes": counter.elements / numel, "ops": counter.ops}


def pass_counts(size: str) -> dict[str, dict[str, float]]:
    """Tensor passes of one step per optimizer (not the compiled ones: their loops are
    Inductor's, not aten ops), on fresh copies of the ``size`` model's parameters."""
    params = transformer_params(*SIZES[size])
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-2 for p in params] for _ in range(2)]
    counts = {}
    for label, make in optimizer_factories(fused=False, cpp=False).items():
        copies = [nn.Parameter(p.detach().clone()) for p in params]
        counts[label] = count_passes(make(copies), copies, grads)
    return counts


def state_bytes_per_param(opt: Any, params: list[nn.Parameter]) -> float:
    """Bytes of tensor state (per-parameter state and the estimate's scalars) / #params."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()

    for state in opt.state.values():
        for value in state.values():
            add(value)
    for group in opt.param_groups:
        for value in group.get("estimate", {}).values():
            add(value)
    return total / sum(p.numel() for p in params)


def time_steps(opt: Any, params: list[nn.Parameter], grads: list[list[torch.Tensor]],
               steps: int, cursor: list[int]) -> float:
    """Median seconds of ``steps`` steps (gradients swapped in between, untimed). On CUDA
    each step is timed by CUDA events around it (GPU time, launch gaps included)."""
    loss = torch.tensor(1.0, device=DEVICE)
    times = []
    cuda = DEVICE.type == "cuda"
    for _ in range(steps):
        pool = grads[cursor[0] % len(grads)]
        cursor[0] += 1
        for p, g in zip(params, pool):
            p.grad = g
        if cuda:
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        opt.step(loss=loss) if isinstance(opt, lrfree.PSSPS) else opt.step()
        if cuda:
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


REFERENCES = ("AdamW (foreach)", "AdamW (fused)")


def run_size(name: str, rounds: int, steps: int, fused: bool,
             log: Callable[[str], None], only: list[str] | None = None) -> dict[str, Any]:
    width, depth, vocab = SIZES[name]
    params = transformer_params(width, depth, vocab)
    numel = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(1)
    grads = [[(torch.randn(p.shape, generator=gen) * 1e-2).to(DEVICE) for p in params]
             for _ in range(4)]
    cursor = [0]
    opts = {}
    warmup = {}
    for label, make in optimizer_factories(fused).items():
        if only and label not in REFERENCES and not any(word in label for word in only):
            continue
        opts[label] = make(params)
        start = time.perf_counter()
        time_steps(opts[label], params, grads, 2, cursor)  # state creation, compilation
        warmup[label] = time.perf_counter() - start
    log(f"{name}: {numel / 1e6:.1f}M parameters in {len(params)} tensors; warm-up done")
    labels = list(opts)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            times[label].append(time_steps(opts[label], params, grads, steps, cursor))
        log(f"  round {r + 1}/{rounds}: AdamW(foreach) {times['AdamW (foreach)'][-1] * 1e3:.1f} ms")
    rows = {}
    for label in labels:
        row: dict[str, Any] = {"median_ms": 1e3 * statistics.median(times[label]),
                               "bytes_per_param": state_bytes_per_param(opts[label], params),
                               "first_two_steps_s": warmup[label]}
        for ref in ("AdamW (foreach)", "AdamW (fused)"):
            ratios = [t / t_ref for t, t_ref in zip(times[label], times[ref])]
            row[f"ratio_to_{ref}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                      "max": max(ratios)}
        skipped = [g.get("skipped_steps", 0) for g in opts[label].param_groups]
        row["skipped_steps"] = max(skipped)
        row["finite"] = all(bool(torch.isfinite(p).all()) for p in params)
        rows[label] = row
    del opts, grads
    gc.collect()
    return {"parameters": numel, "tensors": len(params), "rounds": rounds,
            "steps_per_round": steps, "optimizers": rows}


def vgg_throughput(rounds: int, steps: int, batch: int, log: Callable[[str], None],
                   only: list[str] | None = None) -> dict:
    """Images/s of SmallVGG training on random 28x28 images, per optimizer, interleaved
    (``only`` as in :func:`run_size`; the C++ kernel rows are timed when it builds)."""
    from lrfree.bench.models import SmallVGG

    x_all = torch.randn(4 * batch, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y_all = torch.randint(0, 10, (4 * batch,), generator=torch.Generator().manual_seed(3))
    runs = {}
    for label, make in optimizer_factories(fused=False, cpp=True).items():
        if only and label not in REFERENCES and not any(word in label for word in only):
            continue
        model = SmallVGG()
        runs[label] = (model, make(list(model.parameters())))
    rates: dict[str, list[float]] = {label: [] for label in runs}

    def train(label: str, n: int) -> float:
        model, opt = runs[label]
        start = time.perf_counter()
        for i in range(n):
            x, y = x_all[(i % 4) * batch:(i % 4 + 1) * batch], y_all[(i % 4) * batch:(i % 4 + 1) * batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss.detach()) if isinstance(opt, lrfree.PSSPS) else opt.step()
        return n * batch / (time.perf_counter() - start)

    for label in runs:
        train(label, 2)
    labels = list(runs)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            rates[label].append(train(label, steps))
    params = sum(p.numel() for p in runs[labels[0]][0].parameters())
    log(f"VGG: {params} parameters, batch {batch}")
    out = {}
    for label in labels:
        ratios = [a / b for a, b in zip(rates[label], rates["AdamW (foreach)"])]
        out[label] = {"images_per_s": statistics.median(rates[label]),
                      "relative_to_AdamW (foreach)": statistics.median(ratios)}
    return {"parameters": params, "batch": batch, "rounds": rounds, "steps_per_round": steps,
            "optimizers": out}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Step speed ({result['date']})", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; torch {result['versions']['torch']}, "
             f"threads {result['threads']}; versions {result['versions']}", "",
             "Step time ratios are medians over rounds (min–max in brackets) of the per-round "
             "median step time divided by that round's AdamW step time. "
             "Bytes/param: optimizer state per parameter (float32).", ""]
    for size, res in result["sizes"].items():
        lines += [f"## {size}: {res['parameters'] / 1e6:.1f}M parameters, {res['tensors']} tensors, "
                  f"{res['rounds']} rounds x {res['steps_per_round']} steps", "",
                  "| optimizer | median step (ms) | / AdamW foreach | / AdamW fused | bytes/param |",
                  "|---|---|---|---|---|"]
        for label, row in res["optimizers"].items():
            a, f = row["ratio_to_AdamW (foreach)"], row["ratio_to_AdamW (fused)"]
            lines.append(f"| {label} | {row['median_ms']:.1f} | {a['median']:.2f} "
                         f"[{a['min']:.2f}–{a['max']:.2f}] | {f['median']:.2f} "
                         f"[{f['min']:.2f}–{f['max']:.2f}] | {row['bytes_per_param']:.1f} |")
        compiled = [k for k in res["optimizers"] if k.startswith("PS") and "fused" in k]
        for label in compiled:
            lines.append(f"\n{label}: first two steps (compilation) "
                         f"{res['optimizers'][label]['first_two_steps_s']:.0f} s")
        lines.append("")
    if "passes" in result:
        lines += [f"## Tensor passes per step ({result['passes']['size']} model, steady state)", "",
                  ("Elements read + written / parameters, counted over aten ops "
                   "(`PassCounter`); ops: aten ops touching parameter-sized tensors (a "
                   "`_foreach_*` op counts once)."), "",
                  "| optimizer | passes | ops |", "|---|---|---|"]
        for label, row in result["passes"]["optimizers"].items():
            lines.append(f"| {label} | {row['passes']:.1f} | {row['ops']} |")
        lines.append("")
    if "vgg" in result:
        v = result["vgg"]
        lines += [f"## SmallVGG training throughput ({v['parameters']} parameters, batch "
                  f"{v['batch']}, {v['rounds']} rounds x {v['steps_per_round']} steps)", "",
                  "| optimizer | images/s | relative to AdamW (foreach) |", "|---|---|---|"]
        for label, row in v["optimizers"].items():
            lines.append(f"| {label} | {row['images_per_s']:.0f} | "
                         f"{row['relative_to_AdamW (foreach)']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1M,10M,50M")
    parser.add_argument("--rounds", default="7,5,3", help="rounds per size (comma list)")
    parser.add_argument("--fused-sizes", default="1M",
                        help="sizes that also time our compiled step (compilation takes minutes)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--vgg-rounds", type=int, default=3)
    parser.add_argument("--vgg-steps", type=int, default=5)
    parser.add_argument("--only", default="",
                        help="time only the rows whose label contains one of these words "
                             "(comma list), beside the two AdamW references")
    parser.add_argument("--no-passes", action="store_true", help="skip the pass counts")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: the GPU sizes (12M,134M,570M unless --sizes), CUDA-event "
                             "timing, no C++/VGG/pass-count rows; writes step_speed_cuda.*")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite step_speed.md from the saved step_speed.json")
    args = parser.parse_args()
    if args.markdown_only:
        saved = json.loads((args.out / "step_speed.json").read_text())
        (args.out / "step_speed.md").write_text(markdown(saved))
        return
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
        if args.sizes == parser.get_default("sizes"):
            args.sizes = "12M,134M,570M"
        args.vgg_rounds, args.no_passes = 0, True  # CPU-only parts
        args.fused_sizes = args.fused_sizes if args.fused_sizes != "1M" else "none"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = args.sizes.split(",")
    rounds = [int(r) for r in args.rounds.split(",")]
    rounds += [rounds[-1]] * (len(sizes) - len(rounds))

    def log(msg: str) -> None:
        print(msg, flush=True)

    from importlib.metadata import version

    import dadaptation
    import prodigyopt
    import schedulefree

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(sys.argv),
        "machine": (f"{platform.machine()} {platform.processor() or ''} "
                    f"{platform.system()} {platform.release()}, CPU only, shared".strip()
                    if DEVICE.type == "cpu" else
                    f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), "
                    f"{platform.machine()} {platform.system()}"),
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "lrfree": lrfree.__version__, "dadaptation": version("dadaptation"),
                     "prodigyopt": version("prodigyopt"),
                     "schedulefree": version("schedulefree")},
        "sizes": {},
    }
    del dadaptation, prodigyopt, schedulefree
    for size, n in zip(sizes, rounds):
        fused = size in args.fused_sizes.split(",")
        result["sizes"][size] = run_size(size, n, args.steps, fused, log,
                                         [w for w in args.only.split(",") if w])
    if not args.no_passes:
        result["passes"] = {"size": sizes[0], "optimizers": pass_counts(sizes[0])}
    if args.vgg_rounds > 0:
        result["vgg"] = vgg_throughput(args.vgg_rounds, args.vgg_steps, 64, log,
                                       [w for w in args.only.split(",") if w])
    if DEVICE.type == "cuda":
        try:
            result["versions"]["triton"] = version("triton")
        except Exception:  # noqa: BLE001 - no triton: the fused rows fell back or are absent
            result["versions"]["triton"] = None
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_speed" if DEVICE.type == "cpu" else "step_speed_cuda"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
