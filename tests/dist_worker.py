"""One problem trained under several layouts; the distributed tests compare them.

``train(opt_name, layout)`` with ``layout="single"`` is the reference: one process, the
global batch. Run as a script (``python dist_worker.py RANK WORLD PORT OUT``), each of two
processes trains every scenario of ``SCENARIOS`` under gloo and writes what it saw to
``OUT/rank{RANK}.pt``:

- ``ddp``: DistributedDataParallel, each rank half of the global batch.
- ``sharded``: every rank computes the full gradient of the global batch on a replica,
  but each optimizer holds only the parameters its rank owns (``process_group=``); the
  owners broadcast their parameters after the step. Rank 1 owns only the auxiliary head,
  which is used on a third of the steps: it has no gradient at all on the others (the first
  step included) and must still join every collective.
- ``fsdp``: FSDP2 ``fully_shard`` (DTensor parameters; the 1-element output bias leaves
  rank 1 an empty shard), each rank half of the global batch.
- ``fsdp_scaler``: ``fsdp`` with ``torch.amp.GradScaler`` and an inf in rank 1's shard.
- ``unreduced``: ``sharded`` without ``process_group=``, the control that must differ.

Each step also counts the ``all_reduce`` calls made inside ``opt.step``.
"""
from __future__ import annotations

import datetime
import gc
import os
import sys

import torch
import torch.distributed as dist

import lrfree

STEPS = 48
BATCH = 16
DTYPE = torch.float64
# The default starts (PSDASGD's d0_lr, whose count of live elements is all-reduced under
# sharding; DAdaptSGD's d0): in 48 steps the estimates grow 4e4-2e5x (PSDASGD) and
# 5e5-9e5x (DAdaptSGD) and the parameters move 23-80% of their norm. PSDoG's default
# reps_rel=1e-6 moves them 0.01-0.03% in 48 steps (its slow start, docs/failure_modes.md);
# 1e-3 moves them 9-22% and runs the same code (r_eps from the all-reduced ||x0||).
OPTIMIZERS = {
    "PSDASGD": lambda params, **kw: lrfree.PSDASGD(params, weight_decay=0.01, **kw),
    # the schedule-free iteration (docs/algorithms.md §4h): the same sums, its own step
    "PSDASGD-SF": lambda params, **kw: lrfree.PSDASGD(params, weight_decay=0.01,
                                                       schedule_free=True, **kw),
    "PSSPS": lambda params, **kw: lrfree.PSSPS(params, weight_decay=0.01, **kw),
    "PSDoG": lambda params, **kw: lrfree.PSDoG(params, weight_decay=0.01, reps_rel=1e-3, **kw),
    "DAdaptSGD": lambda params, **kw: lrfree.DAdaptSGD(params, momentum=0.9, **kw),
}
# the estimate each optimizer keeps in its param groups, recorded at every step
ESTIMATE = {"PSDASGD": "d", "PSDASGD-SF": "d", "PSSPS": "polyak_step", "PSDoG": "dog_step", "DAdaptSGD": "d"}
# "unreduced": the sharded layout without process_group= (each rank estimates from its own
# shard only): the control that shows the comparison can fail.
SCENARIOS = [(opt, layout) for layout in ("ddp", "sharded", "fsdp") for opt in OPTIMIZERS]
SCENARIOS.append(("PSDASGD", "unreduced"))
# "fsdp_scaler": FSDP2 with torch.amp.GradScaler; at step SKIP rank 1 alone finds an inf in
# its shard of the gradient, and both ranks must skip the step.
SKIP = 5
SCENARIOS += [(opt, "fsdp_scaler") for opt in ("PSDASGD", "PSSPS", "PSDoG")]
# "independent": each rank trains its own copy on its own half of the batch, no DDP, with
# loss_group=None; "independent_auto": the same with the default loss_group (the control:
# it averages the two unrelated losses).
SCENARIOS += [("PSSPS", "independent"), ("PSSPS", "independent_auto")]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 8)
        self.out = torch.nn.Linear(8, 1)
        self.aux = torch.nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, use_aux: bool) -> torch.Tensor:
        y = self.out(torch.tanh(self.inp(x)))
        return y + self.aux(x) if use_aux else y


def uses_aux(sparse_aux: bool, step: int) -> bool:
    return not sparse_aux or step % 3 == 2


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, 6, generator=gen, dtype=DTYPE)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(BATCH, 1, generator=gen, dtype=DTYPE)
    return x, y


def make_net() -> Net:
    torch.manual_seed(0)
    return Net().to(DTYPE)


def flat(net: torch.nn.Module) -> torch.Tensor:
    parts = []
    for p in net.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        parts.append(full.detach().reshape(-1))
    return torch.cat(parts)


def train(opt_name: str, layout: str, sparse_aux: bool = False,
          skip_step: int | None = None, half: int | None = None) -> dict:
    """Train STEPS steps; returns the final flat parameters and the per-step scalars.

    ``sparse_aux``: the auxiliary head is used on every third step only (the sharded
    layout; DDP would need find_unused_parameters for it). ``skip_step``: no optimizer
    step there (the reference for "fsdp_scaler", whose inf makes the scaler skip it).
    ``half``: a single process trained on that half of each batch (the reference for
    "independent")."""
    rank = dist.get_rank() if layout != "single" else 0
    world = dist.get_world_size() if layout != "single" else 1
    net = make_net()
    owners: dict[torch.Tensor, int] = {}
    kwargs = {}
    if layout == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)
        params = list(net.parameters())
    elif layout in ("fsdp", "fsdp_scaler"):
        from torch.distributed.fsdp import fully_shard
        fully_shard(net.inp)
        fully_shard(net.out)
        fully_shard(net)
        model, params = net, list(net.parameters())
    elif layout in ("independent", "independent_auto"):
        model, params = net, list(net.parameters())
        kwargs = {"loss_group": None} if layout == "independent" else {}
    elif layout in ("sharded", "unreduced"):
        owners = {p: (1 if name.startswith("aux") else 0) for name, p in net.named_parameters()}
        model = net
        params = [p for p in net.parameters() if owners[p] == rank]
        kwargs = {"process_group": dist.group.WORLD} if layout == "sharded" else {}
    else:
        model, params = net, list(net.parameters())
    opt = OPTIMIZERS[opt_name](params, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if layout == "fsdp_scaler" else None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * STEPS)

    collectives = []
    real_all_reduce = dist.all_reduce if layout != "single" else None
    scalars = []
    for step in range(STEPS):
        x, y = batch(step)
        if layout in ("ddp", "fsdp", "fsdp_scaler", "independent", "independent_auto"):
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        elif half is not None:
            x, y = x.chunk(2)[half], y.chunk(2)[half]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x, uses_aux(sparse_aux, step)), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler is not None and step == skip_step and rank == 1:
            grad = net.inp.weight.grad
            (grad.to_local() if hasattr(grad, "to_local") else grad)[0, 0] = float("inf")
        count = [0]
        if real_all_reduce is not None:
            def counting(*args, count=count, **kw):
                count[0] += 1
                return real_all_reduce(*args, **kw)
            dist.all_reduce = counting
        try:
            if scaler is not None:
                scaler.step(opt, loss=loss.detach())
                scaler.update()
            elif step != skip_step:
                opt.step(loss=loss)
        finally:
            if real_all_reduce is not None:
                dist.all_reduce = real_all_reduce
        collectives.append(count[0])
        sched.step()
        group = opt.param_groups[0]
        scalars.append([float(group["effective_lr"]), float(group[ESTIMATE[opt_name]])])
        if owners:
            with torch.no_grad():
                for p, owner in owners.items():
                    dist.broadcast(p, src=owner)
    return {"params": flat(net), "scalars": torch.tensor(scalars, dtype=torch.float64),
            "collectives": collectives, "scale": scaler.get_scale() if scaler else None}


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for opt_name, layout in SCENARIOS:
            sparse = layout in ("sharded", "unreduced")
            skip = SKIP if layout == "fsdp_scaler" else None
            results[f"{opt_name}/{layout}"] = train(opt_name, layout, sparse, skip)
    finally:
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    # the teardown of examples/ddp_fsdp_cpu.py (docs/distributed.md, "Teardown"): collect
    # the FSDP/DDP models' reference cycles while the interpreter is alive
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
