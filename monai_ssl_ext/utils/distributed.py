"""Small helpers that behave the same with and without ``torch.distributed``."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_cat",
    "all_gather_objects",
    "all_reduce_sum",
    "get_rank",
    "get_world_size",
    "is_dist",
    "is_main_process",
    "unwrap_model",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0; identity without dist."""
    if not is_dist():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` (same shape on every rank) over all ranks, as a new tensor; identity without dist.

    Cheaper than :func:`all_gather_cat` when only totals are needed (per-class pixel counts, for example).
    """
    if not is_dist():
        return tensor
    total = tensor.clone().contiguous()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_gather_objects(obj: object) -> list:
    """``[obj_rank0, obj_rank1, ...]`` (pickled, so ranks may hold different amounts); ``[obj]`` without dist."""
    if not is_dist():
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the model itself)."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )
