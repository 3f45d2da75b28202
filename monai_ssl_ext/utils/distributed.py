"""Small helpers that behave the same with and without ``torch.distributed``."""

from __future__ import annotations

import logging
import os
import sys

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_cat",
    "all_gather_objects",
    "all_reduce_sum",
    "finish_process_group",
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


def finish_process_group() -> None:
    """End a torchrun process's part in a finished run: wait for every rank, destroy the default process group,
    then end every rank but 0 at once (after flushing its logs and streams). Nothing without dist.

    Why a rank > 0 does not return to the interpreter: gloo's worker threads may still free the tensors of the
    last collectives while the interpreter shuts down; freeing a tensor Python has seen takes the GIL, which during
    shutdown ends the thread inside a destructor and aborts the process ("terminate called without an active
    exception", SIGABRT; pytorch/pytorch#190489), and torchrun then reports a finished training as failed. Such a
    rank has written nothing (its handlers are off) and has nothing left to do. Rank 0 writes the run's outputs and
    leaves through the interpreter, so that every writer is closed; it is the last to reach the barrier.
    """
    if not is_dist():
        return
    dist.barrier()
    rank = dist.get_rank()
    dist.destroy_process_group()
    if rank == 0:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
