"""The one place that knows about process groups.

The learning-rate-free estimates are global sums over every parameter element. Under data
parallelism (DDP) each rank holds every parameter and the same averaged gradient, so the
local sums are already global and nothing needs communicating. Under sharding (FSDP2's
DTensor parameters, or any layout where each rank holds part of the parameters, declared
with ``process_group=``) each rank sums its shard and the sums are all-reduced: one small
vector per reduction point, on the parameters' device. Every rank takes part in every
collective, also when it has no gradient this step (its contribution is zero).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed support
    DTensor = None  # type: ignore[assignment, misc]


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The rank-local shard of a DTensor; any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def shard_group(params: list[Tensor], process_group: Any) -> Any:
    """The group over which parameters are sharded: the explicit argument, else the mesh of
    DTensor parameters (a 1-D mesh: FSDP2's default), else None (not sharded)."""
    if process_group is not None:
        return process_group
    for p in params:
        if is_dtensor(p):
            mesh = p.device_mesh
            if mesh.ndim != 1:
                raise ValueError(
                    "lrfree supports DTensor parameters on a 1-D device mesh; for other "
                    "layouts pass process_group= the group the parameters are sharded over"
                )
            return mesh.get_group()
    return None


def all_reduce_sum(values: Tensor, group: Any) -> Tensor:
    """Sum a small vector over the group in place (no-op without a group)."""
    if group is not None:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM, group=group)
    return values


def check_loss_group(loss_group: Any) -> Any:
    """``loss_group=`` of the Polyak methods: "auto", None or a process group."""
    if isinstance(loss_group, str) and loss_group == "auto" or loss_group is None:
        return loss_group
    if torch.distributed.is_available() and \
            isinstance(loss_group, torch.distributed.ProcessGroup):
        return loss_group
    raise ValueError(
        f"loss_group must be 'auto' (average the loss over the ranks that share the "
        f"parameters, the default), None (use each rank's loss as given) or a "
        f"torch.distributed ProcessGroup; got {loss_group!r}")


def loss_group(shard: Any, option: Any = "auto") -> Any:
    """The group the mini-batch loss is averaged over: each rank sees its own batch under
    DDP and FSDP, and the Polyak step must be the same on every rank. ``option`` is the
    optimizer's ``loss_group=``: "auto" (the shard group, else WORLD when torch.distributed
    is initialised), None (no averaging: the loss is already global, or each rank trains
    its own model) or an explicit group."""
    if not (isinstance(option, str) and option == "auto"):
        return option
    if shard is not None:
        return shard
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.group.WORLD
    return None


def average(value: Tensor, group: Any) -> Tensor:
    if group is None:
        return value
    out = value.clone().reshape(1)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
    return (out / torch.distributed.get_world_size(group)).reshape(())
