"""A hand-written fused CPU step for :class:`lrfree.PSDASGD` and :class:`lrfree.PSSPS`.

``lrfree.fused(opt, kernel="cpp")`` replaces the eager step's sequence of multi-tensor
kernels by one C++ loop over the elements (PSDASGD: one pass; PSSPS: two, since its step
size needs this step's ``||g'||^2`` first), vectorised with ``at::vec::Vectorized`` and
split over threads with ``at::parallel_for``. The C++ source (``ps_step.cpp``, next to this
file) is compiled on first use with ``torch.utils.cpp_extension.load_inline`` and cached in
torch's extension directory; it needs a C++ compiler and ninja (``pip install
lrfree[kernels]``).

Supported, everything else takes the eager step unchanged (same result as without
``fused``):

- ``PSDASGD`` and ``PSSPS`` themselves (not subclasses), ``scaling="adam"`` (the built-in
  :class:`~lrfree.scaling.Scaling`), ``alpha_norm="initial"``, ``average=False``,
  ``schedule_free=False``;
- every parameter, gradient and state tensor a contiguous CPU tensor, all float32 or all
  float64 (bf16/fp16 parameters, mixed dtypes, channels-last or strided gradients fall back);
- no sharding (``process_group`` / DTensor parameters fall back);
- steady state: the steps up to the one that fixes N (the first step, or with the
  non-finite check the first with a non-zero gradient), for PSDASGD the steps until G0
  and the start of the estimate are fixed, and a step where a parameter gets its first
  gradient run eagerly.

Per-group ``lr`` (schedulers), ``betas`` (``beta1 = 0`` included), ``eps``,
``weight_decay`` and ``decouple`` are supported, as are ``d_coef``, ``growth_rate`` and
the Polyak options (the scalar rules run in Python on 0-d tensors, as in the eager step).
Sums are accumulated in double per vector lane and added chunk by chunk in a fixed order:
the result does not depend on the number of threads, and differs from the eager step
(float32 sums in another order) by float rounding.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrfree.optim._base import Bucket, LRFreeOptimizer
from lrfree.rules.dadapt import DAdaptEstimate
from lrfree.rules.polyak import PolyakStep
from lrfree.scaling import Scaling

SOURCE = Path(__file__).with_name("ps_step.cpp")
FUNCTIONS = ["psdasgd_step", "pssps_norm", "pssps_step", "is_positive", "nonfinite"]
_module: Any = None

INSTALL_HINT = ("it needs a C++ compiler (g++ or clang++) and ninja: install a compiler and "
                "`pip install lrfree[kernels]`, or use the default compiled step, "
                "lrfree.fused(opt), or the eager optimizer")


def _flags() -> list[str]:
    flags = ["-O3"]
    capability = torch.backends.cpu.get_cpu_capability()
    # AVX-512 machines get the AVX2 build too: the AVX-512 variant has been compiled but
    # never run (no such CPU was available), and a step is memory-bound at these widths.
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if sys.platform.startswith("linux"):
        flags.append("-fopenmp")
    return flags


def ensure_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the pip package (the ``kernels`` extra) installs it
    next to the interpreter, which is not on PATH when a venv's python is run without
    activating the venv. Put the package's directory on PATH then."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, os.environ.get("PATH")]))


def load(verbose: bool = False) -> Any:
    """Build (once; cached by torch on disk) and return the extension module.

    Raises RuntimeError naming the fix when it cannot be built.
    """
    global _module
    if _module is not None:
        return _module
    ensure_ninja_on_path()
    source = SOURCE.read_text()
    flags = _flags()
    digest = hashlib.sha256((source + " ".join(flags) + torch.__version__).encode()).hexdigest()
    try:
        import inspect

        from torch.utils.cpp_extension import load_inline

        # the source includes what it needs; torch/extension.h would take ~4x longer
        lean = {"no_implicit_headers": True} \
            if "no_implicit_headers" in inspect.signature(load_inline).parameters else {}
        _module = load_inline(
            name=f"lrfree_ps_step_{digest[:12]}", cpp_sources=[source], functions=FUNCTIONS,
            extra_cflags=flags, extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
            verbose=verbose, **lean)
    except Exception as error:  # no compiler, no ninja, a failed build: all the same fix
        raise RuntimeError(f"lrfree.fused(..., kernel='cpp') could not build its C++ kernel "
                           f"({type(error).__name__}: {error}); {INSTALL_HINT}") from error
    return _module


def plan(opt: LRFreeOptimizer, buckets: list[Bucket]) -> dict[str, list[Tensor]] | None:
    """The flat tensor lists of the kernel for this step, or None when the kernel does not
    support it (the caller then takes the eager step). Changes nothing."""
    from lrfree.optim.ps_dasgd import PSDASGD
    from lrfree.optim.ps_sps import PSSPS

    group0 = opt.param_groups[0]
    if type(opt) not in (PSDASGD, PSSPS) or opt._shard_group is not None:
        return None
    if type(opt._scaling) is not Scaling or opt._scaling.name != "adam" or \
            group0["alpha_norm"] != "initial" or group0["average"] or \
            group0.get("schedule_free"):
        return None
    est = group0.get("estimate")
    if est is None or "alpha_norm" not in est:  # the first step
        return None
    if type(opt) is PSDASGD and "warming" in est and float(est["warming"]) > 0:
        return None  # the Polyak warm-up (PSDASGD warmup="polyak") is an eager step
    if type(opt) is PSDASGD and (est["grad_norm0"].device.type != "cpu" or
                                 not load().is_positive(est["grad_norm0"])):
        # before the first non-zero gradient G0 is 0 and this step would fix it: eager
        return None
    dtype = buckets[0].params[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return None
    ps: list[Tensor] = []
    gs: list[Tensor] = []
    ms: list[Tensor] = []
    vs: list[Tensor] = []
    ss: list[Tensor] = []
    steps: list[Tensor] = []
    hyper: list[list[float]] = []
    state = opt.state
    for b in buckets:
        group = b.group
        beta1, beta2 = group["betas"]
        for key, g in zip(b.keys, b.grads):
            st = state[key]
            if "step" not in st:  # a first gradient: its state is created eagerly
                return None
            gs.append(g)
            ms.append(st["m"] if beta1 > 0 else g)  # beta1 = 0: a placeholder, not read
            vs.append(st["v"])
            ss.append(st.get("s", g))  # PSSPS: g as a placeholder, not read
            steps.append(st["step"])
        ps += b.params
        hyper += [[group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                   1.0 if group["decouple"] else 0.0]] * len(b.params)
    # one flat test (this runs every step: ~0.2 us per tensor)
    if not all(t.is_cpu and t.dtype is dtype and t.is_contiguous()
               for t in (*ps, *gs, *ms, *vs, *ss)) or \
            not all(k.is_cpu and k.dtype is dtype for k in steps):
        return None
    return {"p": ps, "g": gs, "m": ms, "v": vs, "s": ss, "step": steps,
            "hyper": [torch.tensor(hyper, dtype=torch.float64)]}


def prepare(opt: LRFreeOptimizer, lists: dict[str, list[Tensor]], loss: Tensor | None,
            check: bool) -> tuple[Tensor | None, Tensor | None]:
    """What comes before the non-finite check, changing nothing: ``(bad, sums)`` with
    ``bad`` a 0-d tensor > 0 where a gradient or the loss is not finite (None unless
    ``check``), for ``opt._finite``, and ``sums`` what :func:`run` needs.

    PSSPS: its first pass (``||g'||^2``, which writes nothing) also checks the gradients.
    PSDASGD: the check is one C++ read of the gradients (the eager check's min/max per
    tensor costs about two reads on a CPU).
    """
    kernel = load()
    if _is_pssps(opt):
        sums = kernel.pssps_norm(lists["p"], lists["g"], lists["v"], lists["step"],
                                 lists["hyper"][0], opt.param_groups[0]["estimate"]["alpha_norm"])
        bad = sums[1].to(torch.float32) if check else None
    else:
        sums = None
        bad = kernel.nonfinite(lists["g"]) if check else None
    if bad is not None and loss is not None:
        bad = bad + (~torch.isfinite(loss)).to(bad.dtype)
    return bad, sums


def _is_pssps(opt: LRFreeOptimizer) -> bool:
    """PSSPS takes the two-pass Polyak kernel, PSDASGD the one-pass D-Adaptation one (not
    ``needs_loss``: PSDASGD needs the loss too with its Polyak warm-up)."""
    from lrfree.optim.ps_sps import PSSPS

    return isinstance(opt, PSSPS)


def run(opt: LRFreeOptimizer, lists: dict[str, list[Tensor]], loss: Tensor | None,
        sums: Tensor | None) -> None:
    """Take the step with the kernel, from :func:`plan`'s lists and :func:`prepare`'s sums
    (after the non-finite check, which the caller ran)."""
    est = opt.param_groups[0]["estimate"]
    if _is_pssps(opt):
        assert sums is not None
        _pssps(opt, lists, est, loss, sums)
    else:
        _psdasgd(opt, lists, est)


def _psdasgd(opt: LRFreeOptimizer, lists: dict[str, list[Tensor]],
             est: dict[str, Tensor]) -> None:
    group0 = opt.param_groups[0]
    dtype = est["d"].dtype
    lam = DAdaptEstimate.base_step(est)
    norm = est["alpha_norm"]
    sums = load().psdasgd_step(lists["p"], lists["g"], lists["m"], lists["v"], lists["s"],
                               lists["step"], lists["hyper"][0], lam, norm)
    dot, sq_weighted, sq_norm_s, _ = sums.to(dtype).unbind()
    DAdaptEstimate.update(est, lam, dot, sq_weighted, sq_norm_s, group0["growth_rate"],
                          group0["d_coef"])
    for group in opt.param_groups:
        group["effective_lr"] = lam * group["lr"] * norm
        group["d"], group["d_hat"] = est["d"], est["d_hat"]


def _pssps(opt: LRFreeOptimizer, lists: dict[str, list[Tensor]], est: dict[str, Tensor],
           loss: Tensor | None, sums: Tensor) -> None:
    assert loss is not None
    group0 = opt.param_groups[0]
    dtype = est["eta"].dtype
    norm = est["alpha_norm"]
    eta = PolyakStep.update(est, loss.to(norm.device, dtype), sums[0].to(dtype),
                            group0["f_star"], group0["c"], group0["delta"],
                            group0["cap_start"], group0["cap_growth"])
    load().pssps_step(lists["p"], lists["g"], lists["m"], lists["v"], lists["step"],
                      lists["hyper"][0], eta, norm)
    for group in opt.param_groups:
        group["effective_lr"] = eta * group["lr"] * norm
        group["polyak_step"] = eta
