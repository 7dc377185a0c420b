"""Train a small MLP with lrfree.PSDASGD under DDP or FSDP2, on CPU with gloo.

    torchrun --nproc_per_node 2 examples/ddp_fsdp_cpu.py --mode ddp
    torchrun --nproc_per_node 2 examples/ddp_fsdp_cpu.py --mode fsdp

Both modes train the same model on the same global batch (each rank takes its half), so
they print the same losses. Nothing in the optimizer changes between them: under DDP the
gradients arrive averaged and every rank holds every parameter; under FSDP2 the parameters
are DTensors and PSDASGD all-reduces the sums of its estimate over their mesh.
"""
from __future__ import annotations

import argparse
import gc

import torch
import torch.distributed as dist

import lrfree


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 4))


def global_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(size, 20, generator=gen)
    teacher = torch.Generator().manual_seed(-1)
    y = (x @ torch.randn(20, 4, generator=teacher)).argmax(1)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--save", help="rank 0 writes the parameters, losses and lrs here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    net = make_model()
    init = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    if args.mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        model = fully_shard(net)

    opt = lrfree.PSDASGD(model.parameters())  # no process_group: DTensors are detected
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    losses, lrs = [], []
    for step in range(args.steps):
        x, y = global_batch(step, args.batch)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(float(mean_loss) / world)
        lrs.append(float(opt.param_groups[0]["effective_lr"]))
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  "
                  f"effective_lr {float(opt.param_groups[0]['effective_lr']):.3g}", flush=True)

    params = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                        for p in model.parameters()])
    if rank == 0 and args.save:
        torch.save({"init": init, "params": params, "losses": losses, "effective_lr": lrs},
                   args.save)
    # Teardown (docs/distributed.md, "Teardown"): drop what holds DTensors and collect the
    # reference cycles FSDP's hooks make while the interpreter is fully alive, then meet at
    # a barrier. Left to the garbage collection of interpreter shutdown, a gloo worker
    # thread can need the GIL to free a collective's tensors after shutdown has begun and
    # abort the process ("terminate called without an active exception").
    del model, net, opt, sched, params
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
