"""Collectives that degrade to identities when no process group exists (plain CPU runs, tests)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor that carries no gradient (a new tensor; the input is untouched)."""
    tensor = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all ranks, in rank order (no gradient flows back)."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over ranks (a new tensor)."""
    tensor = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


_HOST_GROUP = None


def host_flag_any(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank, agreed over CPU (gloo): no device synchronisation.

    Under NCCL a gloo side group is created on first use (every rank reaches it at the same step).
    """
    global _HOST_GROUP
    if not is_distributed():
        return flag
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, group=_HOST_GROUP)
    return bool(value.item() > 0)


def shutdown() -> None:
    """Destroy the process group (if any) and forget the groups built on it."""
    global _HOST_GROUP
    if is_distributed():
        dist.destroy_process_group()
    _HOST_GROUP = None
