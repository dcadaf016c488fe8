"""Several processes (``torchrun``, ``accelerate launch``): which one this is, and sharing work between them.

The reference's work (base responses, reference log-probs) is split by rank: each process computes a slice, and every
process gets the merged result, gathered through ``torch.distributed`` (so it works across machines too), and writes
it to its cache. The process group is the one accelerate (and so the transformers Trainer) uses: created here on
first need by accelerate's ``PartialState``, reused by the Trainer.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

import torch
from accelerate import PartialState

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes the shared outputs (rank 0, or the only process)."""
    return rank() == 0


def shard(items: Sequence[T]) -> list[T]:
    """This process's slice: every ``world_size``-th item from its rank on."""
    return list(items[rank()::world_size()])


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for with one process).

    torch's own barrier, not accelerate's ``wait_for_everyone``: on CPUs under torchrun accelerate's state reports
    one process (``DistributedType.NO``) and its wait returns at once, though it made the process group; two
    processes then read the shared cache at different moments (one after the other had written) and split the
    reference's work differently."""
    if world_size() > 1:
        _state()
        torch.distributed.barrier()


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    if world_size() == 1:
        return [obj]
    _state()
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def agreed(value: T) -> T:
    """Rank 0's ``value``, in every process. For decisions read from shared files (which users, cells, pairs a rerun
    still has to make): processes reading at slightly different moments could answer differently, do different
    work, and then wait forever on each other's collectives."""
    if world_size() == 1:
        return value
    _state()
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Destroy the process group, if one was made, while the interpreter is still whole.

    Left to interpreter exit, gloo's worker threads can outlive the objects they hold and the process aborts
    ("terminate called without an active exception", SIGABRT: pytorch/pytorch#190489), failing a run that finished.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _state() -> PartialState:
    return PartialState()
