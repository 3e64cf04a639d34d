"""DistributedDataParallel plumbing for runs launched by torchrun (NCCL on GPUs, gloo on CPU).

A single process is a world of size 1: every helper here is then a no-op.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from fairbench.errors import FairbenchError


def resolve_device(name: str) -> torch.device:
    """``--device`` as a torch device: ``auto`` is CUDA where there is a GPU; a GPU that is not there
    is an error (the one rule for `fairbench run`, `fairbench eval` and the Python API)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FairbenchError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FairbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard_range(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))

    def gather_shards(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's `shard_range` result, in rank order, on every rank."""
        if not self.enabled:
            return local
        sizes = [len(DistInfo(r, self.world_size).shard_range(n)) for r in range(self.world_size)]
        width = max(sizes)
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of ``tensor`` on every rank (in place)."""
        if self.enabled:
            dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank (keep tensors inside it on the CPU)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on rank 0 alone (a check or a write of the run folder); a `FairbenchError`
        it raises is raised on every rank.

        Otherwise the other ranks would wait for rank 0 in their next collective until torchrun
        killed them (and they reported a false preemption), or for ever without torchrun. One
        broadcast, which also holds the other ranks back until ``fn`` is done.
        """
        failure = None
        if self.is_main:
            try:
                fn()
            except FairbenchError as exc:
                failure = exc
        message = self.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if message is not None:
            raise FairbenchError(message)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank.

        DDP syncs buffers at the start of each training forward, so after the last one every
        rank holds its own update; evaluation and scoring passes must all use rank 0's.
        """
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[torch.device, DistInfo]]:
    """The one device and DDP setup of `fairbench run`, `fairbench eval` and the Python API: join
    torchrun's process group (if any), map this process to its GPU by the one rule (`cuda_index`),
    and leave the group at the end."""
    info = init_distributed(device.type)
    try:
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", cuda_index(info.local_rank, torch.cuda.device_count()))
            torch.cuda.set_device(device)
        yield device, info
    finally:
        shutdown_distributed()


def cuda_index(local_rank: int, visible: int) -> int:
    """The GPU of the process with ``local_rank`` among the ``visible`` ones.

    torchrun on a machine: GPU ``local_rank``. A scheduler that shows each task its own GPU
    (Slurm's ``--gpus-per-task=1``, CUDA_VISIBLE_DEVICES set per task): GPU 0, whatever the rank.
    """
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise FairbenchError(
        f"LOCAL_RANK is {local_rank} but this process sees {visible} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
        f"start at most {visible} processes per machine, or show each one GPU"
    )


def shutdown_distributed() -> None:
    """Leave the process group; meant for a ``finally`` block around the whole run.

    A DDP wrapper still alive when its process group is destroyed aborts the process at exit
    (std::terminate, torch 2.14 with gloo), turning a finished run into a failed one: the frames
    that held it are released and collected first. After a normal end the ranks also leave
    together; with an exception on its way out they do not wait (the others may never arrive).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    exc = sys.exc_info()[1]
    if exc is None:
        dist.barrier()
    else:  # the traceback keeps the trainer (and its DDP wrapper) of finished frames alive
        traceback.clear_frames(exc.__traceback__)
    gc.collect()  # DDP holds reference cycles: free it now, not at interpreter exit
    dist.destroy_process_group()
